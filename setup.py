"""The package list, by discovery so that it cannot drift from the folders: every package under
pyrovae/, and cli/ (which lives at the top level of the repository) installed as pyrovae.cli, so
no bare top-level ``cli`` lands in site-packages. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

setup(packages=["pyrovae", *(f"pyrovae.{name}" for name in find_packages("pyrovae")),
                "pyrovae.cli", *(f"pyrovae.cli.{name}" for name in find_packages("cli"))],
      package_dir={"pyrovae": "pyrovae", "pyrovae.cli": "cli"})
