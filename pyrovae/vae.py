"""A VAE as pyrovae holds it: a Pyro model and a guide, both ``nn.Module`` s, in one module
(one ``state_dict``, one device), with the two programs bound once for the objectives."""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import nn

from .programs import bind, can


class VAE(nn.Module):
    """``model`` p_θ(x, z) and ``guide`` q(z | x): any pair that follows :mod:`pyrovae.programs`."""

    def __init__(self, model: nn.Module, guide: nn.Module):
        super().__init__()
        self.model, self.guide = model, guide
        self._bound: dict[bool, tuple[Callable, Callable]] = {}

    def bound(self, register: bool = False) -> tuple[Callable, Callable]:
        """(model, guide) in the form ``f(index, beta, *batch, num_data=N)``, the same objects on
        every call; ``register`` puts the parameters in Pyro's param store (for the JIT)."""
        if register not in self._bound:
            self._bound[register] = (bind(self.model, "model", register), bind(self.guide, "guide", register))
        return self._bound[register]

    def can(self, capability: str) -> bool:
        """What the guide can do (:data:`pyrovae.programs.CAPABILITIES`)."""
        return can(self.guide, capability)

    def row_parameters(self) -> list[nn.Parameter]:
        """Parameters whose first dimension indexes training rows (a per-datapoint guide's tables)."""
        rows = getattr(self.guide, "row_parameters", None)
        return list(rows()) if rows is not None else []

    @property
    def device(self) -> torch.device:
        """Where the parameters (or, for programs without any, the buffers) live; CPU if neither."""
        tensor = next(self.parameters(), None)
        tensor = next(self.buffers(), None) if tensor is None else tensor
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        tensor = next(self.parameters(), None)
        return tensor.dtype if tensor is not None else torch.get_default_dtype()


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside the block, e.g. so only a local q moves
    (eval mode too). Restores each parameter's flag and the mode on exit."""
    flags, training = [(p, p.requires_grad) for p in module.parameters()], module.training
    for p, _ in flags:
        p.requires_grad_(False)
    module.train(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)
