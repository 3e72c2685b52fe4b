"""What the commands share: common options, the JSON result, and output-path checks."""
from __future__ import annotations

import json
import os
from pathlib import Path

import click

from pyrovae.errors import UsageError

DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
DATA_DIR = click.option("--data-dir", default=None, help="Folder holding MNIST/raw (else $PYROVAE_DATA_DIR).")


def emit(result: dict) -> None:
    """The command's result: one JSON object on stdout."""
    click.echo(json.dumps(result, sort_keys=True, default=str))


def output_file(path: str, option: str, suffixes: tuple[str, ...]) -> Path:
    """Check an output path before any work is done: its suffix, and a writable folder."""
    out, wanted = Path(path), " or ".join(suffixes)
    if out.suffix.lower() not in suffixes:
        raise UsageError(f"{option} {path!r} must end in {wanted}")
    if out.is_dir():
        raise UsageError(f"{option} {path!r} is a folder; pass a file name ending in {wanted}")
    if not out.parent.is_dir():
        raise UsageError(f"{option} {path!r}: folder {str(out.parent)!r} does not exist; create it first")
    if not os.access(out.parent, os.W_OK):
        raise UsageError(f"{option} {path!r}: folder {str(out.parent)!r} is not writable; choose another path")
    return out
