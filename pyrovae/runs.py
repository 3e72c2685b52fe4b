"""A run directory: config.json, checkpoint.pt, metrics.jsonl and images, written atomically.

A checkpoint is data, not code: tensors and plain numbers saved with ``torch.save`` and read
back with ``torch.load(weights_only=True)``, which refuses pickled objects that would run code.
It carries a SHA-256 of its own content (every tensor's bytes and every number), verified on
load, so a damaged file is refused instead of evaluated. What is computed from a checkpoint
(the lines of evaluations.jsonl, the partial results of an interrupted evaluation) records the
SHA-256 of the checkpoint.pt it came from, so results of a replaced or retrained model are
never mixed with the current one's.
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import io
import json
import os
import pickle
import platform
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy
import pyro
import torch

from .core.errors import UsageError, option
from .core.files import atomic_path
from .core.version import __version__

FORMAT_VERSION = 2   # 2: the model and guide are nn.Modules of their own (pyrovae 0.2)
CONFIG = "config.json"
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"           # the checkpoint of the epoch with the best validation ELBO (fit --validation)
CHECKPOINTS = {"last": CHECKPOINT, "best": BEST}   # what --checkpoint names
METRICS = "metrics.jsonl"
EVALUATIONS = "evaluations.jsonl"
LOCK = ".lock"
PARTIAL = ".partial"       # per-point results of interrupted evaluations
CERTIFICATE = "certificate.md"   # pyrovae certify's page
# everything pyrovae writes in a run directory: what --overwrite deletes, and nothing else
RUN_FILES = (CONFIG, CHECKPOINT, BEST, METRICS, EVALUATIONS, CERTIFICATE, "curves.png", "samples.png",
             "reconstructions.png")
RUN_FOLDERS = (PARTIAL, "tensorboard")
CHECKPOINT_KEYS = ("epoch", "step", "partial_loss", "partial_seen", "model", "optimizer", "rng")
def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: Path, records: list[dict]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))


def append_jsonl(path: Path, record: dict) -> None:
    """Append one line. The whole file is rewritten atomically, so a reader or a crash never
    sees half a line, under a lock on the folder, so two processes appending at once keep both."""
    with _folder_lock(Path(path).parent):
        write_jsonl(path, read_jsonl(path) + [record])


@contextlib.contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock on a folder (flock on its descriptor: no file of its own), waited for;
    held for a read and a rewrite, milliseconds. Apart from :func:`run_lock`'s .lock, which a
    long ``fit`` holds."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)   # closing drops the lock


def record_evaluation(run_dir: Path, command: str, options: dict, summary: dict, checkpoint: str | None = None
                      ) -> dict:
    """Append what an evaluation measured, and how, to RUN_DIR/evaluations.jsonl (atomically),
    with ``checkpoint``, the SHA-256 of the checkpoint.pt it evaluated."""
    record = {"command": command, "options": options, "summary": summary, "versions": versions(),
              "checkpoint": checkpoint,
              "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    append_jsonl(Path(run_dir) / EVALUATIONS, json.loads(json.dumps(record, default=str)))
    return record


def read_jsonl(path: Path) -> list[dict]:
    """The records of a .jsonl file (none if it does not exist); a damaged file (a line cut, not
    JSON, binary) is a :class:`UsageError` naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    try:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError(f"a {type(record).__name__}, not an object")
                records.append(record)
    except UnicodeDecodeError:
        raise UsageError(f"{str(path)!r} is not text (damaged, or another file under its name); restore it, "
                         "or move it aside") from None
    except ValueError as error:   # json.JSONDecodeError is a ValueError
        raise UsageError(f"{str(path)!r} line {number} is cut or not JSON ({str(error)[:80]}); restore the file, "
                         f"or delete that line") from None
    return records


def check_writable(path: Path, what: str, fix: str = "fix the folder's permissions or choose another path") -> None:
    """Refuse, before any work, a file that could not be written where ``path`` says: a folder
    missing or read-only, or a name too long. Creates and removes the temporary file
    :func:`atomic_path` would write."""
    path = Path(path)
    check_name(path, what)
    try:
        with atomic_path(path) as tmp:
            raise _Probed(tmp)
    except _Probed:
        pass
    except OSError as error:
        raise UsageError(f"cannot write {what} {str(path)!r} ({error.strerror or error}); {fix}") from None


def check_name(path: Path, what: str) -> None:
    """Refuse a file name longer than its folder takes (asking the OS about such a path fails)."""
    try:
        limit = os.pathconf(path.parent, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    if len(os.fsencode(path.name)) > limit:
        raise UsageError(f"{what} {str(path)[:60]!r}...: the name is {len(os.fsencode(path.name))} bytes long, more "
                         f"than the {limit} this folder takes; choose a shorter name")


class _Probed(Exception):
    """Leaves :func:`atomic_path` without replacing the file (its temporary file is removed)."""


def versions() -> dict[str, str]:
    return {"pyrovae": __version__, "torch": torch.__version__, "pyro": pyro.__version__,
            "numpy": numpy.__version__, "python": platform.python_version()}


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive lock on RUN_DIR for the life of a ``fit``; the OS drops it if the process dies."""
    try:
        handle = open(Path(run_dir) / LOCK, "a")
    except OSError as error:
        raise UsageError(f"cannot write in {str(run_dir)!r} ({error.strerror or error}); fix its permissions "
                         f"or choose another {option('out')}") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        handle.close()
        if error.errno in (errno.EAGAIN, errno.EACCES):
            raise UsageError(f"another pyrovae process is writing {str(run_dir)!r}; wait for it to finish "
                             f"or choose another {option('out')}") from None
        raise
    try:
        for stale in Path(run_dir).glob(".*.tmp"):   # left by a process killed mid-write (atomic_path)
            stale.unlink(missing_ok=True)
        check_writable(Path(run_dir) / CHECKPOINT, "the checkpoint",   # before any work, not at the first epoch's end
                       f"fix the folder's permissions or choose another {option('out')}")
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


def run_contents(run_dir: Path) -> tuple[bool, bool, list[str]]:
    """What a folder holds: (a pyrovae config.json, a checkpoint.pt beside it, and, without the
    config, the names of its files: a pyrovae run has its config.json before any other file, so
    they are the user's, whatever their names, a checkpoint.pt too). A folder that does not exist
    holds nothing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False, False, []
    try:
        config = bool(read_config(run_dir))   # refuses a config.json that is not pyrovae's
    except UsageError:
        config = False
    if config:
        return True, (run_dir / CHECKPOINT).exists(), []
    # the lock and temporary files of a fit that stopped before it wrote its config.json
    others = sorted(name for name in os.listdir(run_dir)
                    if name != LOCK and not (name.startswith(".") and name.endswith(".tmp")))
    return False, False, others


def clear_run(run_dir: Path) -> None:
    """Delete what pyrovae wrote in RUN_DIR (``RUN_FILES``, ``RUN_FOLDERS``), and nothing else."""
    for name in RUN_FILES:
        (Path(run_dir) / name).unlink(missing_ok=True)
    for name in RUN_FOLDERS:
        shutil.rmtree(Path(run_dir) / name, ignore_errors=True)


def state_checksum(state: dict) -> str:
    """SHA-256 of a checkpoint's content, its ``checksum`` entry left out: every tensor's dtype,
    shape and bytes and every other value, in a fixed order (dict keys sorted)."""
    digest = hashlib.sha256()

    def feed(value) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"tensor {tensor.dtype} {tuple(tensor.shape)}:".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"dict {len(value)}:".encode())
            for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"{type(value).__name__} {len(value)}:".encode())
            for item in value:
                feed(item)
        else:
            digest.update(f"{type(value).__name__} {value!r};".encode())

    feed({key: value for key, value in state.items() if key != "checksum"})
    return digest.hexdigest()


def save_checkpoint(run_dir: Path, state: dict, name: str = CHECKPOINT) -> None:
    """checkpoint.pt (or ``name``: best.pt), atomically, with the checksum of its content.
    Serialized in memory first: torch's writer turns a full disk into a RuntimeError (torch
    2.14), a plain write into the OSError (ENOSPC) it is."""
    state = {"format_version": FORMAT_VERSION, **state}
    state["checksum"] = state_checksum(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(Path(run_dir) / name) as tmp:
        write_bytes(tmp, buffer.getbuffer())


def write_bytes(path: Path, data) -> None:
    """``data`` into a new file at ``path`` (the one place a checkpoint's bytes meet the disk)."""
    with open(path, "wb") as file:
        file.write(data)


def checkpoint_sha256(run_dir: Path, name: str = CHECKPOINT) -> str | None:
    """SHA-256 of RUN_DIR's checkpoint.pt (or ``name``) as it is on disk (None without one): the
    checkpoint an evaluation recorded, compared by ``show``."""
    path = Path(run_dir) / name
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(run_dir: Path, map_location: str | torch.device = "cpu", name: str = CHECKPOINT) -> dict:
    """Read a checkpoint (checkpoint.pt, or ``name``: best.pt) as tensors only and verify it; any
    problem becomes a :class:`UsageError` naming the fix. The state gains ``file_sha256``, the
    SHA-256 of the bytes it was read from."""
    path = Path(run_dir) / name
    if name == BEST and not path.exists() and (Path(run_dir) / CHECKPOINT).exists():
        raise UsageError(f"{str(run_dir)!r} has no {BEST}: it was trained without a validation split; pass "
                         f"{option('checkpoint', 'last')}, or train with {option('validation', 400)} (say)")
    if not path.exists():
        again = (f"pyrovae fit --out {run_dir} --resume" if (Path(run_dir) / CONFIG).exists()
                 else f"pyrovae fit --out {run_dir}")
        raise UsageError(f"no checkpoint at {str(path)!r}; train one with `{again}`")
    data = path.read_bytes()   # hashed and loaded from the same bytes, whatever replaces the file meanwhile
    if not zipfile.is_zipfile(io.BytesIO(data)):   # pyrovae writes zip checkpoints; the legacy format is a bare pickle
        raise UsageError(f"{str(path)!r} is truncated or not a pyrovae checkpoint (not a torch zip archive); "
                         "retrain or restore it")
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
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
    _verify(state, path)
    state["file_sha256"] = hashlib.sha256(data).hexdigest()
    return state


def _verify(state: dict, path: Path) -> None:
    """The checksum (checkpoints written before pyrovae stored one have none), the entries a
    checkpoint has, and finite weights."""
    if "checksum" in state and state["checksum"] != state_checksum(state):
        raise UsageError(f"{str(path)!r} is damaged: its content does not match the checksum it was saved with; "
                         "restore it from a copy, or retrain")
    missing = [key for key in CHECKPOINT_KEYS if key not in state]
    if missing or not isinstance(state["model"], dict):
        what = f"lacks its {', '.join(map(repr, missing))} entries" if missing else "has no weights"
        raise UsageError(f"{str(path)!r} {what}; it is not a whole pyrovae checkpoint: restore it, or retrain")
    for name, tensor in state["model"].items():
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UsageError(f"{str(path)!r} holds weights that are not finite (NaN or inf in {name!r}); "
                             "restore it from a copy, or retrain")


def read_config(run_dir: Path) -> dict:
    """RUN_DIR's config.json: a dict whose ``config`` holds the run's options (checked by
    :meth:`pyrovae.config.FitConfig.from_run`) and whose other entries have their types."""
    path = Path(run_dir) / CONFIG
    if not path.exists():
        raise UsageError(f"{str(run_dir)!r} is not a pyrovae run (no {CONFIG}); pass the --out folder of `pyrovae fit`")
    try:
        saved = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UsageError(f"{str(path)!r} is not valid JSON ({error}); restore it from the run") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise UsageError(f"{str(path)!r} is not a pyrovae config (no \"config\" object); restore it from the run")
    for key, kind in (("data_dim", int), ("num_train", int), ("num_test", int), ("seed", int),
                      ("typed_paths", dict), ("image_shape", list)):
        value = saved.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            raise UsageError(f"{str(path)!r} has {key} {value!r}, not a{'n' if kind is int else ''} "
                             f"{kind.__name__}; restore it from the run")
    return saved


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
    """What a run directory records: its config, a summary of its training, and the recorded
    evaluations of its current checkpoints, checkpoint.pt and best.pt (``evaluations``), apart
    from those of a checkpoint it no longer holds, or recorded without a checksum by an older pyrovae (``other_evaluations``);
    a :class:`UsageError` when the folder is not a pyrovae run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{str(run_dir)!r} is not a folder; pass the --out folder of `pyrovae fit`")
    saved = read_config(run_dir)
    metrics = read_jsonl(run_dir / METRICS)
    training: dict[str, Any] = {"epochs": len(metrics)}
    if metrics:
        last = metrics[-1]
        seconds = sum(_number(m.get("train_seconds")) or 0 for m in metrics) + \
            sum(_number(m.get("eval_seconds")) or 0 for m in metrics)
        training.update({key: _number(last.get(key)) for key in ("train_elbo", "test_elbo", "test_reconstruction",
                                                                  "test_kl")})
        training["minutes"] = round(seconds / 60, 2)
        tested = [m for m in metrics if _number(m.get("test_elbo")) is not None]
        if tested:
            best = max(tested, key=lambda m: m["test_elbo"])
            training["best_test_elbo"], training["best_epoch"] = best["test_elbo"], best.get("epoch")
        validated = [m for m in metrics if _number(m.get("validation_elbo")) is not None]
        if validated:   # best.pt's epoch: the first of the best (a later tie does not replace it)
            best = max(validated, key=lambda m: m["validation_elbo"])
            training.update({"validation_elbo": _number(validated[-1]["validation_elbo"]),
                             "best_validation_elbo": best["validation_elbo"],
                             "best_validation_epoch": best.get("epoch")})
        if _number(last.get("test_elbo_points")) is not None:   # a guide without an encoder: a test-time fit's
            training["test_elbo_points"] = last["test_elbo_points"]
    current, best_pt = checkpoint_sha256(run_dir), checkpoint_sha256(run_dir, BEST)
    held = {sha for sha in (current, best_pt) if sha is not None}   # the checkpoints the run holds
    evaluations = read_jsonl(run_dir / EVALUATIONS)
    return {"run_dir": str(run_dir), "config": saved["config"], "versions": saved.get("versions"),
            "program": saved.get("program"), "program_info": saved.get("program_info"),
            "training": training, "checkpoint": current, "best_checkpoint": best_pt,
            "evaluations": [e for e in evaluations if e.get("checkpoint") in held],
            "other_evaluations": [e for e in evaluations if e.get("checkpoint") not in held]}


def _number(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
