"""Your own model and guide from a file or a module: ``--program FILE.py:FACTORY`` or
``--program package.module:FACTORY``.

``FACTORY()`` (no arguments) returns a :class:`~pyrovae.vae.VAE`, or a (model, guide) pair of
what Pyro's ``SVI`` takes (modules, bound methods of a module, functions). A run records the
file's absolute path and a SHA-256 of its bytes, so every command finds the program again from
any folder, says so plainly when the file has moved, and notes when it has changed since training.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from pathlib import Path

from .core.errors import UsageError, option
from .core.vae import VAE


log = logging.getLogger(__name__)


def split_spec(spec: str) -> tuple[str, str]:
    """(file or module, factory name) of ``FILE.py:FACTORY`` / ``module:FACTORY``."""
    where, sep, factory = spec.rpartition(":")
    if not sep or not where or not factory.isidentifier():
        raise UsageError(f"{option('program', spec)} is not FILE.py:FACTORY or module:FACTORY; e.g. "
                         f"{option('program', 'my_vae.py:make')} where make() returns a pyrovae.VAE or a (model, guide) pair")
    return where, factory


def is_file_spec(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def absolute_spec(spec: str) -> str:
    """The spec with a file made absolute (a module name stays as it is)."""
    where, factory = split_spec(spec)
    if is_file_spec(where):
        where = str(Path(where).expanduser().resolve())
    return f"{where}:{factory}"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record(spec: str) -> dict:
    """What a run keeps of its program: the spec (absolute), and for a file its SHA-256."""
    where, factory = split_spec(spec)
    out = {"spec": spec, "factory": factory}
    if is_file_spec(where):
        out["sha256"] = file_digest(Path(where))
    return out


def check_spec(spec: str) -> None:
    """Refuse, before any work, a spec whose file does not exist or is not Python."""
    where, _ = split_spec(spec)
    if is_file_spec(where):
        path = Path(where).expanduser()
        if not path.is_file():
            raise UsageError(f"{option('program', spec)}: {where!r} does not exist (or is not a file); "
                             "pass the path of your Python file")
        if path.suffix != ".py":
            raise UsageError(f"{option('program', spec)}: {where!r} is not a .py file")


def _import_file(path: Path):
    name = "pyrovae_program_" + hashlib.sha256(str(path).encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise UsageError(f"cannot import {str(path)!r} as Python; pass a .py file")
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.parent))   # the file's own imports of its neighbours
    try:
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def load_program(spec: str, run_dir: str | Path | None = None, recorded: dict | None = None) -> VAE:
    """The VAE that ``spec``'s factory returns. ``run_dir`` and ``recorded`` (the run's record of
    its program) shape the messages: a moved file is named with the option that points at its new place."""
    where, factory = split_spec(spec)
    if is_file_spec(where):
        path = Path(where)
        if not path.is_file():
            whose = f"the program of {str(run_dir)!r}, " if run_dir is not None else ""
            raise UsageError(f"{whose}{where!r}, does not exist (moved or deleted?); pass "
                             f"{option('program')} NEW_PATH.py:{factory} with its new location")
        digest = file_digest(path)
        if recorded and recorded.get("sha256") not in (None, digest):
            log.warning(f"pyrovae: note: {where} has changed since the run was trained; its checkpoint is loaded into "
                        "the program as it is now")
        try:
            module = _import_file(path)
        except UsageError:
            raise
        except Exception as error:   # the user's file raised while importing
            raise UsageError(f"importing {where!r} failed ({type(error).__name__}: {str(error)[:200]}); fix the file") \
                from None
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as error:
            raise UsageError(f"{option('program', spec)}: cannot import module {where!r} ({error}); pass an "
                             "importable module, or FILE.py:FACTORY") from None
    make = getattr(module, factory, None)
    if not callable(make):
        raise UsageError(f"{option('program', spec)}: {where} has no function {factory!r}; define {factory}() "
                         "returning a pyrovae.VAE or a (model, guide) pair")
    try:
        made = make()
    except Exception as error:
        raise UsageError(f"{factory}() of {where} raised {type(error).__name__}: {str(error)[:200]}") from None
    if isinstance(made, VAE):
        return made
    if isinstance(made, (tuple, list)) and len(made) == 2 and all(callable(p) for p in made):
        return VAE(*made)
    raise UsageError(f"{factory}() of {where} returned {type(made).__name__}; return a pyrovae.VAE(model, guide) "
                     "or a (model, guide) pair")
