"""A released pyrovae: the wheel `pip wheel .` builds holds every package and asset, and it runs
from its own files (not from the source tree an editable install points at). .ci/run also
installs the wheel into a fresh venv and runs the quickstart and an evaluate from it."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ["pyrovae", "cli", "pyproject.toml", "setup.py", "README.md"]


def packages_on_disk() -> set[str]:
    """Every package of the source tree under its installed name (cli/ is pyrovae.cli)."""
    found = set()
    for top, name in (("pyrovae", "pyrovae"), ("cli", "pyrovae.cli")):
        for init in (ROOT / top).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / top).parts
            found.add(".".join((name, *parts)))
    return found


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources (so the build leaves nothing in the tree)."""
    work = tmp_path_factory.mktemp("release")
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(work / "dist")], cwd=source, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (built,) = (work / "dist").glob("pyrovae-*.whl")
    return built


def test_the_wheel_holds_every_package_and_the_assets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    packaged = {name[: -len("/__init__.py")].replace("/", ".") for name in names if name.endswith("/__init__.py")}
    assert packaged == packages_on_disk()
    assert {"pyrovae.guides", "pyrovae.cli", "pyrovae.evaluation", "pyrovae.training"} <= packaged
    assert "pyrovae/assets/mnist_sample.npz" in names
    assert not any(name.startswith("cli/") for name in names), "a bare top-level cli package would be installed"


def test_the_wheel_runs_from_its_own_files(wheel, tmp_path):
    """Every module imports from the unpacked wheel, and the command's help lists every command.
    ``-S`` skips the .pth files, so an editable install of the source tree cannot fill the gaps;
    the dependencies come from this interpreter's site-packages."""
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    path = os.pathsep.join([str(site), *(p for p in sys.path if p.endswith("site-packages"))])
    script = ("import importlib, pkgutil, pyrovae, pyrovae.cli.main as main; "
              f"assert pyrovae.__file__.startswith({str(site)!r}), pyrovae.__file__; "
              "[importlib.import_module(m.name) for m in pkgutil.walk_packages(pyrovae.__path__, 'pyrovae.')]; "
              "from pyrovae.data import load_dataset; print(len(load_dataset('mnist-sample').train))")
    env = {"PYTHONPATH": path, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["5000"]
    proc = subprocess.run([sys.executable, "-S", "-m", "pyrovae.cli.main", "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for command in ("fit", "evaluate", "compare", "bdmc", "show", "sample", "reconstruct", "interpolate", "traverse",
                    "latent-map"):
        assert command in proc.stdout, command
