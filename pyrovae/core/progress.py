"""How long work reports how far it is: a bar on stderr, or the caller's own callback."""
from __future__ import annotations

from typing import Callable, Union

from tqdm import tqdm

from .distributed import current

Report = Union[bool, None, Callable[[int, int], None]]
"""True: a bar on stderr; a callable(done, total); False or None: nothing."""


class Progress:
    """``progress``: True for a bar on stderr (one for a distributed run: rank 0's), a
    callable(done, total), or False/None for nothing. Call it with the amount done so far; the bar
    is closed by :meth:`close` or at the end of a ``with`` block, also after an error."""

    def __init__(self, progress: Report, total: int, desc: str = "", unit: str = "pt"):
        self.callback = progress if callable(progress) else None
        self.total, self.bar = total, None
        if progress is True and current().is_main:
            self.bar = tqdm(total=total, unit=unit, desc=desc, leave=False, unit_scale=unit != "pt")

    def __call__(self, done: int) -> None:
        if self.callback:
            self.callback(done, self.total)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *error) -> None:
        self.close()
