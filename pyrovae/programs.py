"""What pyrovae asks of a Pyro model and guide, and how it calls them.

A model is a Pyro program ``model(*batch)`` over a minibatch ``batch = (x,)`` or ``(x, y, ...)``
(tensors whose first dimension indexes datapoints) with every sample site inside one plate
named ``DATA_PLATE`` at dim -1: latent sites, and the observed site(s) with ``obs=x``. A guide
is a program with the same arguments whose sample sites are the model's latent sites; a guide
that keeps parameters per datapoint also takes ``index=`` (the rows of the batch in the data set).
Both are ``nn.Module`` s, so their parameters can be optimized, checkpointed and wrapped by DDP.

pyrovae calls them through :func:`bind`, in the form ``program(index, beta, *batch, num_data=N)``
that Pyro's objectives (and their JIT) take: tensors positional, numbers as keywords. Binding adds

- the scale N / B of a minibatch of B rows from N (as a subsampled plate would), and
- ``beta``, the KL coefficient, on the latent sites of model and guide, so the objective is
  reconstruction − β KL (Higgins et al. 2017); β = 1 is the true ELBO,

so user programs need neither. What a model or guide can do (per-datapoint tables, mean-field
structure, an encoder for new data) is read from attributes with :func:`can`, never from its type.
"""
from __future__ import annotations

import inspect
from typing import Callable, NamedTuple, Sequence, Union

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

DATA_PLATE = "data"
Batch = Sequence[torch.Tensor]
Data = Union[torch.Tensor, Sequence[torch.Tensor]]

# What a model or guide may declare, and what pyrovae assumes when it does not.
CAPABILITIES = {
    "amortized": True,       # q(z | x) for any x, from shared parameters (an encoder)
    "per_datapoint": False,  # parameters per training row: needs ``index``; stepped row-sparse
    "mean_field": False,     # latent sites independent given x: closed-form KL where registered
}


class LatentLayer(NamedTuple):
    """A latent site as the built-in guides see it: q(name | parent) from an MLP with ``hidden``
    widths; ``parent`` is ``"x"`` (the data) or the name of an earlier latent site."""

    name: str
    dim: int
    parent: str
    hidden: tuple[int, ...]


def can(program: object, capability: str) -> bool:
    """``program``'s declared ``capability`` (a class or instance attribute), else the default."""
    return bool(getattr(program, capability, CAPABILITIES[capability]))


def data_plate(x: torch.Tensor) -> pyro.plate:
    """The plate over the rows of a minibatch, at dim -1."""
    return pyro.plate(DATA_PLATE, x.shape[0], dim=-1)


def as_batch(data: Data) -> tuple[torch.Tensor, ...]:
    """A tensor or a sequence of tensors, as a tuple of tensors with rows first."""
    return (data,) if isinstance(data, torch.Tensor) else tuple(data)


def rows_of(batch: Batch, rows) -> tuple[torch.Tensor, ...]:
    """The rows ``rows`` (slice, range or index tensor) of every tensor of ``batch``."""
    if isinstance(rows, range):
        rows = slice(rows.start, rows.stop)
    return tuple(t[rows] for t in batch)


def num_rows(batch: Batch) -> int:
    return batch[0].shape[0]


class ScaleLatents(Messenger):
    """Multiplies the log density of every latent (not observed) sample site by ``beta``."""

    def __init__(self, beta: float | torch.Tensor):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.beta * msg["scale"]


def accepts_index(program: Callable) -> bool:
    """Whether ``program`` takes the ``index`` keyword (table guides do)."""
    target = program.forward if isinstance(program, torch.nn.Module) else program
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "index" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def bind(program: Callable, name: str = "", register: bool = False) -> Callable:
    """``program(*batch[, index=])`` as ``f(index, beta, *batch, num_data=None)``.

    ``register``: put an ``nn.Module`` program's parameters in Pyro's param store under
    ``name`` (Pyro's JIT objectives find parameters there). Bind once and reuse the result:
    the JIT keys its compiled loss on the id of the function.
    """
    wants_index = accepts_index(program)
    module = program if register and isinstance(program, torch.nn.Module) else None

    def bound(index: torch.Tensor | None, beta: float | torch.Tensor, *batch: torch.Tensor,
              num_data: int | None = None):
        if module is not None:
            pyro.module(name, module)
        scale = 1.0 if num_data is None else num_data / batch[0].shape[0]
        with poutine.scale(scale=scale), ScaleLatents(beta):
            return program(*batch, index=index) if wants_index else program(*batch)

    bound.program = program
    return bound
