"""SIGINT and SIGTERM as a flag that long loops check between units of work, so that what is
finished can be saved before stopping.

:class:`StopFlag` installs the handlers for the life of a ``with`` block (main thread only) and
restores the caller's on exit. Inner loops that run long between two checkpoints (a local fit,
an annealing chain) call :func:`check`, which raises :class:`Abandon` once a signal has arrived:
the unit under way is dropped and the caller saves the units already finished.
"""
from __future__ import annotations

import signal
import threading

_active: list["StopFlag"] = []


class Abandon(Exception):
    """A signal arrived: drop the unit of work under way (raised by :func:`check`)."""


class StopFlag:
    """SIGINT/SIGTERM set the flag (in the main thread); the handlers are restored on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        _active.append(self)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        _active.remove(self)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def received() -> int | None:
    """The signal an enclosing :class:`StopFlag` caught, if any (the innermost's first)."""
    return next((flag.signal for flag in reversed(_active) if flag.signal is not None), None)


def check() -> None:
    """Raise :class:`Abandon` if a signal has arrived under an enclosing :class:`StopFlag`."""
    if received() is not None:
        raise Abandon()
