"""torch.distributed as ``torchrun`` sets it up, and what pyrovae does with it.

``torchrun --nproc-per-node N -m pyrovae.cli.main fit ...`` starts N processes with RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT in their environment; the CLI's ``main``
calls :func:`setup`, which joins the process group (gloo on CPU, nccl on CUDA, one GPU per
local rank). Library functions act distributed when a process group is initialized (by the CLI,
or by a caller of their own) and alone otherwise: they ask :func:`current`.

Training (DistributedDataParallel semantics): every rank draws the same permutation of the epoch
(the same seeded generator) and takes its contiguous share of each global batch of
``--batch-size`` rows; its loss is scaled by N / (its rows), so DDP's average of the ranks'
gradients is exactly the single-process gradient of the global batch. The reparameterization
noise is seeded per (epoch, step, position in the global batch), so the draws, and a run's
numbers, do not depend on how many processes share the batch. Only rank 0 writes the run
directory and prints; a signal on any rank, or a non-finite loss, stops every rank at the same
step (one small all-reduce per step).

Evaluation: the batches of points are dealt out round-robin and the per-point results gathered
on rank 0; draws are seeded per point, so the result equals a single process's.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from .errors import UsageError

TIMEOUT = timedelta(minutes=30)   # a rank waiting longer than this at a collective gives up


@dataclass(frozen=True)
class Context:
    """This process's place in the group: ``rank`` of ``world`` (1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, start: int, stop: int) -> range:
        """This rank's contiguous share of positions [start, stop) of a global batch."""
        size = stop - start
        per = -(-size // self.world)
        first = min(start + self.rank * per, stop)
        return range(first, min(first + per, stop))

    def any(self, flag: bool, device: torch.device | None = None) -> bool:
        """Whether ``flag`` is true on any rank (a collective: every rank must call it)."""
        if not self.active:
            return flag
        value = torch.tensor([1.0 if flag else 0.0], device=device or _collective_device())
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def flags(self, values: list[float], device: torch.device | None = None) -> list[float]:
        """The elementwise maximum of ``values`` over the ranks (one collective)."""
        if not self.active:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=device or _collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor.tolist()

    def total(self, value: float, device: torch.device | None = None) -> float:
        """The sum of ``value`` over the ranks."""
        if not self.active:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=device or _collective_device())
        dist.all_reduce(tensor)
        return float(tensor.item())

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (None elsewhere)."""
        if not self.active:
            return [obj]
        out = [None] * self.world if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]



def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Context:
    """The process group this process belongs to, if one is initialized; else a world of one."""
    if dist.is_available() and dist.is_initialized():
        return Context(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    return Context()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun describes in the environment (the CLI calls this once):
    nccl when this rank will use a GPU, gloo otherwise."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed; run without torchrun")
    cuda = torch.cuda.is_available() and device != "cpu"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    return current()


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
