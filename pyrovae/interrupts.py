"""SIGINT and SIGTERM as a flag that long loops check between units of work, so that what is
finished can be saved before stopping."""
from __future__ import annotations

import signal
import threading


class StopFlag:
    """SIGINT/SIGTERM set the flag (in the main thread); the handlers are restored on exit."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
