"""The exceptions users see, and the words they are written in.

:class:`UsageError` is bad input: the message names the problem and the fix; the CLI prints it
on one line and exits 2. The same checks serve the command line and Python, so a message names
an option through :func:`option`: ``--lr`` when the CLI is talking (it calls
:func:`speak_cli` once at start), ``lr=`` otherwise.
"""
from __future__ import annotations

_AUDIENCE = {"cli": False}


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the work after what was finished had been saved."""


def speak_cli() -> None:
    """From now on, name options as command-line flags (the CLI's ``main`` calls this)."""
    _AUDIENCE["cli"] = True


def speaking_cli() -> bool:
    return _AUDIENCE["cli"]


def option(name: str, value: object = None) -> str:
    """An option as the user wrote it: ``--batch-size 64`` on the CLI, ``batch_size=64`` in Python;
    a flag (``value=True``) is ``--resume`` or ``resume=True``."""
    if _AUDIENCE["cli"]:
        flag = "--" + name.replace("_", "-")
        return flag if value is None or value is True else f"{flag} {value}"
    param = name.replace("-", "_")
    return f"{param}=" if value is None else f"{param}={value!r}"
