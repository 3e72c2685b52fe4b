"""The exceptions users see, and the words they are written in.

:class:`UsageError` is bad input: the message names the problem and the fix; the CLI prints it
on one line and exits 2. The same checks serve the command line and Python, so a message names
an option through :func:`option`: ``--lr`` while the CLI is talking (inside :func:`cli_audience`),
``lr`` (the parameter) otherwise.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

# who reads the messages: the CLI's user (flags) or a Python caller (parameters), per thread and task
_CLI = contextvars.ContextVar("pyrovae_cli_audience", default=False)
PYTHON_NAMES = {"out": "run_dir"}   # CLI options whose Python parameter has another name


class UsageError(ValueError):
    """Bad input from the user: the message names the problem and the fix."""


class Interrupted(Exception):
    """SIGINT/SIGTERM stopped the work after what was finished had been saved."""


@contextlib.contextmanager
def cli_audience(cli: bool = True) -> Iterator[None]:
    """Inside the block, messages name options as command-line flags (the CLI's ``main`` uses it);
    with ``cli=False``, by their Python names (e.g. the entries of a saved config)."""
    token = _CLI.set(cli)
    try:
        yield
    finally:
        _CLI.reset(token)


def speaking_cli() -> bool:
    return _CLI.get()


def option(name: str, value: object = None) -> str:
    """An option as the user wrote it: ``--batch-size`` / ``--batch-size 64`` on the CLI,
    ``batch_size`` / ``batch_size=64`` in Python; a flag (``value=True``) is ``--resume`` or ``resume=True``,
    and turned off (``value=False``) ``--no-compile`` or ``compile=False``."""
    if _CLI.get():
        flag = "--" + name.replace("_", "-")
        if value is False:
            return "--no-" + name.replace("_", "-")
        return flag if value is None or value is True else f"{flag} {value}"
    param = PYTHON_NAMES.get(name, name.replace("-", "_"))
    return param if value is None else f"{param}={value!r}"
