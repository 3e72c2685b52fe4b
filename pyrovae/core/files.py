"""Files written atomically: readers see the old file or the new one, never half of one. Every
file pyrovae writes (run folders, per-point results, pictures) goes through :func:`atomic_path`."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

TMP_NAME = 200   # bytes of the target's name kept in a temporary file's name (NAME_MAX is 255)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    so readers see the old file or the new one, never half of one."""
    path = Path(path)
    while True:
        # created like any file the user's process makes (0666 less the umask; mkstemp would give 0600);
        # the name is cut so that any name the folder takes has a temporary file too
        name = os.fsencode(path.name)[:TMP_NAME].decode(errors="ignore")
        tmp = path.parent / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            break
        except FileExistsError:
            continue
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
