"""pyrovae's version, read by pyproject.toml (``[tool.setuptools.dynamic]``) and by the runs it records."""
__version__ = "0.2.0"
