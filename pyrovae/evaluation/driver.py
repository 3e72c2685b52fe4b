"""What every estimator of log p(x) shares: batches of points, and per-point results that
survive an interrupt (the draws are seeded per site, particle and row: :mod:`pyrovae.core.noise`).

Batches. :func:`run_batches` evaluates contiguous batches of rows with a function that returns
per-point arrays, skips rows already done (a resumed run), and on SIGINT/SIGTERM after a batch
saves what is done (atomically) before raising :class:`EvaluationInterrupted`. Every estimator
(importance sampling, AIS, BDMC, the comparison of inference gaps) goes through
:func:`evaluate_points`, with its per-point partial results where :class:`Keep` says.
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..core.distributed import current
from ..core.errors import Interrupted, UsageError, option
from ..core.files import atomic_path
from ..core.interrupts import Abandon, StopFlag
from ..core.vae import VAE

# ---------------------------------------------------------------------------- resumable batches

class EvaluationInterrupted(Interrupted):
    """SIGINT/SIGTERM stopped an evaluation; the finished points are saved in ``path``."""

    def __init__(self, done: int, total: int, path: Path | None):
        kept = f"the {done} finished points are saved in {path}" if path else "nothing was saved"
        self.message = f"stopped after {done} of {total} points; {kept}"
        again = "; continue by calling again with resume=True" if path else ""
        super().__init__(self.message + again)
        self.done, self.total, self.path = done, total, path


def fingerprint(options: dict) -> str:
    """A short stable hash of the options that determine an evaluation's per-point values."""
    return hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:12]


class Partial:
    """Per-point results of an unfinished evaluation: arrays of length n and a mask of done rows,
    in an .npz file with the options they were computed with (``options["checkpoint"]``, when
    given, names the checkpoint the points came from: never resumed with another one)."""

    def __init__(self, n: int, options: dict, path: Path | None = None):
        self.n, self.options, self.path = n, options, path
        self.done = np.zeros(n, dtype=bool)
        self.values: dict[str, np.ndarray] = {}

    @classmethod
    def load(cls, path: Path, n: int, options: dict) -> "Partial":
        """The saved state at ``path``; refuses one made with other options or another checkpoint,
        and a damaged file."""
        again = f"run without {option('resume', True)} (the points are computed again)"
        if not path.exists():
            raise UsageError(f"there is no interrupted evaluation with these options to resume ({path} does not "
                             f"exist); run without {option('resume', True)}")
        try:
            with np.load(path, allow_pickle=False) as saved:
                saved_options = json.loads(str(saved["__options__"]))
                done = saved["__done__"].copy()
                values = {k: saved[k].copy() for k in saved.files if not k.startswith("__")}
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:   # JSONDecodeError too
            raise UsageError(f"{path} is damaged ({str(error).splitlines()[0][:80] or type(error).__name__}); "
                             f"{again}") from None
        wanted = json.loads(json.dumps(options, sort_keys=True, default=str))
        if not isinstance(saved_options, dict) or done.dtype != bool or done.shape != (n,) or \
                any(array.shape[:1] != (n,) for array in values.values()):
            raise UsageError(f"{path} is damaged (not the arrays of {n} points an evaluation saves); {again}")
        if saved_options.get("checkpoint") != wanted.get("checkpoint"):
            raise UsageError(f"{path} holds points of another checkpoint of this run (it was trained further or "
                             f"replaced since); {again}")
        if saved_options != wanted:
            raise UsageError(f"{path} was made with other options ({saved_options}); rerun with those, or "
                             f"without {option('resume', True)}")
        partial = cls(n, options, path)
        partial.done, partial.values = done, values
        return partial

    def record(self, rows: range, values: dict[str, np.ndarray]) -> None:
        for name, array in values.items():
            if name not in self.values:
                self.values[name] = np.full((self.n, *array.shape[1:]), np.nan, dtype=array.dtype)
            self.values[name][rows.start:rows.stop] = array
        self.done[rows.start:rows.stop] = True

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp, open(tmp, "wb") as file:
            np.savez(file, __done__=self.done, __options__=np.array(json.dumps(self.options, sort_keys=True,
                                                                                 default=str)), **self.values)

    def discard(self) -> None:
        if self.path is not None:
            self.path.unlink(missing_ok=True)


@dataclass(frozen=True)
class Keep:
    """Where an interrupted evaluation keeps its finished points (``path``; None: nowhere), whether
    to continue from them (``resume``), and what else the points depend on besides the estimator's
    own settings (``options``, e.g. the checkpoint they came from: never resumed with another)."""

    path: str | Path | None = None
    resume: bool = False
    options: dict = field(default_factory=dict)

    def open(self, n: int, options: dict) -> Partial:
        """The per-point results of ``n`` points computed with ``options`` (and :attr:`options`):
        those saved at :attr:`path` when resuming, else none yet."""
        options = {**options, **self.options}
        path = Path(self.path) if self.path else None
        return Partial.load(path, n, options) if self.resume and path else Partial(n, options, path)


def evaluate_points(vae: VAE, partial: Partial, batch_size: int, evaluate: Callable[[range], dict[str, np.ndarray]],
                    progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """:func:`run_batches` over ``partial``'s points under one scope of the VAE's param store for
    the whole run (not one per program call); the saved partial results are removed once every
    point is done."""
    with vae.param_store():
        values = run_batches(partial.n, batch_size, evaluate, partial, progress)
    partial.discard()
    return values


def run_batches(n: int, batch_size: int, evaluate: Callable[[range], dict[str, np.ndarray]],
                partial: Partial, progress: Callable[[int], None] | None = None) -> dict[str, np.ndarray]:
    """``evaluate(rows)`` for every batch of rows not yet done; per-point arrays of length n.

    In a distributed run (:mod:`pyrovae.core.distributed`) the batches are dealt out
    round-robin and every rank returns the merged results. On SIGINT/SIGTERM (in the main
    thread) the batch under way is dropped at its next :func:`pyrovae.interrupts.check` (or
    finishes, if it has none); the finished rows are saved to ``partial.path`` (by rank 0) and
    :class:`EvaluationInterrupted` is raised on every rank, also when the signal came during the
    last batch and that batch finished: a signal always stops, with everything kept.
    """
    context = current()
    todo = [range(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]
    todo = [rows for rows in todo if not partial.done[rows.start:rows.stop].all()]
    rounds = -(-len(todo) // context.world)
    with StopFlag() as flag:
        for number in range(rounds):
            slot = number * context.world + context.rank
            if slot < len(todo):
                try:
                    partial.record(todo[slot], evaluate(todo[slot]))
                except Abandon:
                    pass
            if progress:
                progress(min(n, int(partial.done.sum()) * context.world))
            if context.any(flag.signal is not None):
                break
        _merge(partial, context)
        stopped = context.any(flag.signal is not None)   # every rank asks once more: a signal during the merge
    if stopped:
        if context.is_main:
            partial.save()
        raise EvaluationInterrupted(int(partial.done.sum()), n, partial.path)
    return partial.values


def _merge(partial: Partial, context) -> None:
    """Every rank's finished rows into ``partial``, on every rank."""
    if not context.active:
        return
    gathered = context.gather((partial.done, partial.values))
    merged = None
    if context.is_main:
        for done, values in gathered:
            for name, array in values.items():
                if name not in partial.values:
                    partial.values[name] = np.full_like(array, np.nan)
                partial.values[name][done] = array[done]
            partial.done |= done
        merged = (partial.done, partial.values)
    partial.done, partial.values = context.broadcast(merged)


# ---------------------------------------------------------------------------- memory

def available_memory(device: torch.device) -> int | None:
    """Bytes the process can still allocate on ``device`` (None where unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: int, what: str, fix: str, device: torch.device, share: float = 0.8) -> None:
    """Refuse, before any work, a job whose buffers need more than ``share`` of the memory left."""
    have = available_memory(device)
    if have is not None and need > share * have:
        raise UsageError(f"{what} needs about {need / 1e9:.3g} GB at once, more than the {have / 1e9:.3g} GB "
                         f"available; {fix}")
