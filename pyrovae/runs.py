"""A run directory: config.json, checkpoint.pt, metrics.jsonl and images, written atomically.

A checkpoint is data, not code: tensors and plain numbers saved with ``torch.save`` and read
back with ``torch.load(weights_only=True)``, which refuses pickled objects that would run code.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pickle
import platform
import secrets
import zipfile
from pathlib import Path
from typing import Any, Iterator

import torch

from .errors import UsageError

FORMAT_VERSION = 2   # 2: the model and guide are nn.Modules of their own (pyrovae 0.2)
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
EVALUATIONS = "evaluations.jsonl"
LOCK = ".lock"


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename,
    so readers see the old file or the new one, never half of one."""
    path = Path(path)
    while True:
        # created like any file the user's process makes (0666 less the umask; mkstemp would give 0600)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
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


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line; the whole file is rewritten atomically so a crash never leaves half a line."""
    write_jsonl(path, read_jsonl(path) + [record])


def record_evaluation(run_dir: Path, command: str, options: dict, summary: dict) -> dict:
    """Append what an evaluation measured, and how, to RUN_DIR/evaluations.jsonl (atomically)."""
    import datetime
    record = {"command": command, "options": options, "summary": summary, "versions": versions(),
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    append_jsonl(Path(run_dir) / EVALUATIONS, json.loads(json.dumps(record, default=str)))
    return record


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def versions() -> dict[str, str]:
    import numpy
    import pyro

    from . import __version__
    return {"pyrovae": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on RUN_DIR for the life of a ``fit``; the OS drops it if the process dies."""
    handle = open(Path(run_dir) / LOCK, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise UsageError(f"another pyrovae process is writing {str(run_dir)!r}; wait for it to finish "
                             "or choose another --out") from None
        raise
    try:
        for stale in Path(run_dir).glob(".*.tmp"):   # left by a process killed mid-write (atomic_path)
            stale.unlink(missing_ok=True)
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def save_checkpoint(run_dir: Path, state: dict) -> None:
    with atomic_path(Path(run_dir) / CHECKPOINT) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint as tensors only; any problem becomes a :class:`UsageError` naming the fix."""
    path = Path(run_dir) / CHECKPOINT
    if not path.exists():
        raise UsageError(f"no checkpoint at {str(path)!r}; train one with `pyrovae fit --out {run_dir}`")
    if not zipfile.is_zipfile(path):   # pyrovae writes zip checkpoints; the legacy format is a bare pickle
        raise UsageError(f"{str(path)!r} is truncated or not a pyrovae checkpoint (not a torch zip archive); "
                         "retrain or restore it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        lines = [line for line in str(error).splitlines() if "GLOBAL" in line or "Unsupported" in line]
        detail = (lines or [type(error).__name__])[0].strip()[:120]
        raise UsageError(f"{str(path)!r} holds objects other than tensors and was not loaded "
                         f"(a checkpoint is data, not code: {detail}); retrain or restore it") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        raise UsageError(f"{str(path)!r} is truncated or not a pyrovae checkpoint "
                         f"({str(error).splitlines()[0][:100]}); retrain or restore it") from None
    if not isinstance(state, dict) or "format_version" not in state:
        raise UsageError(f"{str(path)!r} is not a pyrovae checkpoint; retrain with `pyrovae fit`")
    if state["format_version"] != FORMAT_VERSION:
        raise UsageError(f"{str(path)!r} has checkpoint format {state['format_version']!r}, this pyrovae reads "
                         f"format {FORMAT_VERSION}; use the pyrovae version that wrote it")
    return state


def read_config(run_dir: Path) -> dict:
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise UsageError(f"{str(run_dir)!r} is not a pyrovae run (no {CONFIG}); pass the --out folder of `pyrovae fit`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{str(path)!r} is not valid JSON ({error}); restore it from the run") from None


def resolve_device(device: str) -> torch.device:
    """``auto`` takes CUDA when present; ``cpu``, ``cuda`` or ``cuda:N`` as asked, if usable here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device} was asked for but CUDA is not available here; "
                             "use --device cpu or auto")
        if device != "cuda" and int(device[5:]) >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                             "use --device cuda or auto")
        return torch.device(device)
    raise UsageError(f"unknown --device {device!r}; use auto, cpu, cuda or cuda:N")


def describe_run(run_dir: Path) -> dict:
    """What a run directory records: its config, a summary of its training, and every recorded
    evaluation; a :class:`UsageError` when the folder is not a pyrovae run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{str(run_dir)!r} is not a folder; pass the --out folder of `pyrovae fit`")
    saved = read_config(run_dir)
    if not isinstance(saved, dict) or "config" not in saved:
        raise UsageError(f"{str(run_dir / CONFIG)!r} is not a pyrovae config; pass the --out folder of `pyrovae fit`")
    metrics = read_jsonl(run_dir / METRICS)
    training: dict[str, Any] = {"epochs": len(metrics)}
    if metrics:
        last = metrics[-1]
        seconds = sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0) for m in metrics)
        training.update({key: last.get(key) for key in ("train_elbo", "test_elbo", "test_reconstruction", "test_kl")})
        training["minutes"] = round(seconds / 60, 2)
        tested = [m for m in metrics if m.get("test_elbo") is not None]
        if tested:
            best = max(tested, key=lambda m: m["test_elbo"])
            training["best_test_elbo"], training["best_epoch"] = best["test_elbo"], best["epoch"]
    return {"run_dir": str(run_dir), "config": saved["config"], "versions": saved.get("versions"),
            "program": saved.get("program"), "program_info": saved.get("program_info"),
            "training": training, "evaluations": read_jsonl(run_dir / EVALUATIONS)}
