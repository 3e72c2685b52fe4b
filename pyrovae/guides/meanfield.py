"""Per-datapoint Gaussian tables: q_i(z) = N(loc_i, diag exp(log_scale_i)²) for every row i.

As a training guide (``--guide meanfield``) this is classical mean-field VI with local
parameters (Hoffman et al. 2013): no encoder, each training point owns a free Gaussian per
latent site, initialized at N(0, I). The same tables, one row per evaluated point, are the
family of the test-time fit q* (:mod:`pyrovae.inference.local_fit`) for every guide whose
sites are Gaussian: the gap between the best q_i and an encoder's q_φ(z | x_i) is the
amortization gap (Cremer, Li & Duvenaud 2018).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import biject_to

from ..core.contract import required
from ..core.options import Options, between, non_negative, option, positive
from ..core.programs import data_plate, is_real


def _key(site: str) -> str:
    return site.replace(".", "·")   # parameter names cannot hold dots


@dataclass
class LocalStepOptions(Options):
    """How a per-datapoint guide's rows are trained. Each row of the tables is stepped only when
    its batch comes up, so it gets its own learning rate and extra steps on its batch first
    (classical SVI, Hoffman et al. 2013): 0.2 and 4 took mnist-sample's train ELBO from -205
    (0.05, 0) to -135 in 15 epochs."""

    local_lr: float = option(0.2, "Learning rate of the q_i.", check=positive)
    local_steps: int = option(4, "At most this many steps on a batch's own q_i before each joint step.",
                              check=between(0, 1000))
    local_tol: float = option(0.0, "Stop a batch's local steps once one gains less than this (nats per point); 0 "
                              "takes all --local-steps.",
                              check=non_negative("nats per point", "0: take every local step"))
    local_lr_decay: float = option(0.0, "A row's learning rate is --local-lr x (1 + t)^-DECAY after its t-th step "
                                   "(Robbins-Monro, Hoffman et al. 2013); 0 keeps it constant.",
                                   check=between(0, 1, " (0: constant)"))


class MeanFieldGuide(nn.Module):
    """Tables ``loc[site]``, ``log_scale[site]`` of shape [num_rows, *event_shape] per latent site.

    ``forward(x, index)`` takes the rows ``index`` of the tables (all rows, in order, when
    ``index`` is None and x has as many rows as the tables). A site with a constrained
    ``support`` (positive, a simplex, ...) is the Gaussian pushed through ``biject_to(support)``,
    as Pyro's AutoNormal does: the tables live in the unconstrained space.
    """

    cli_help = "free diagonal Gaussians per training point, no encoder"
    Options = LocalStepOptions
    amortized = False
    per_datapoint = True
    mean_field = True

    def __init__(self, sites: Mapping[str, tuple[int, ...] | int], num_rows: int, *, init_scale: float = 1.0,
                 sparse: bool = False, supports: Mapping[str, object] | None = None):
        super().__init__()
        self.supports = {name: support for name, support in (supports or {}).items() if not is_real(support)}
        self.sites = {name: (shape,) if isinstance(shape, int) else tuple(shape) for name, shape in sites.items()}
        self.num_rows = num_rows
        # sparse: a minibatch's gradient holds its own rows only (row-sparse training); dense for
        # per-point fits, whose every step touches every row
        self.sparse = sparse
        # keyed by site name, so two tables of the same sites line up whatever their order
        self.loc = nn.ParameterDict({_key(name): nn.Parameter(torch.zeros(num_rows, *shape))
                                     for name, shape in self.sites.items()})
        self.log_scale = nn.ParameterDict({_key(name): nn.Parameter(torch.full((num_rows, *shape), math.log(init_scale)))
                                           for name, shape in self.sites.items()})

    @classmethod
    def from_options(cls, options: LocalStepOptions, model: nn.Module, num_data: int) -> "MeanFieldGuide":
        # the model's sample order, so Pyro's mean-field check sees the same order in both programs
        layers = required(model, "model", "latent_layers", cls.__name__)()
        return cls({layer.name: layer.dim for layer in reversed(layers)}, num_data, sparse=True)

    @classmethod
    def from_moments(cls, moments: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                     supports: Mapping[str, object] | None = None) -> "MeanFieldGuide":
        """Tables holding the given per-row (loc, scale) of each site (in the unconstrained space
        of a site with a constrained support)."""
        first = next(iter(moments.values()))[0]
        guide = cls({name: tuple(loc.shape[1:]) for name, (loc, _) in moments.items()}, len(first), supports=supports)
        guide.to(device=first.device, dtype=first.dtype)
        with torch.no_grad():
            for name, (loc, scale) in moments.items():
                guide.loc[_key(name)].copy_(loc)
                guide.log_scale[_key(name)].copy_(scale.log())
        return guide

    def row_parameters(self) -> list[nn.Parameter]:
        """The parameters whose first dimension indexes datapoints."""
        return list(self.parameters())

    def moments(self, index: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(loc, scale) per site for the rows ``index`` (all rows when None)."""
        return {name: (self._rows(self.loc[_key(name)], index), self._rows(self.log_scale[_key(name)], index).exp())
                for name in self.sites}

    def _rows(self, table: torch.Tensor, index: torch.Tensor | None) -> torch.Tensor:
        if index is None:
            return table
        if self.sparse and table.dim() == 2:
            return nn.functional.embedding(index, table, sparse=True)
        return table[index]

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> None:
        if index is None and x.shape[0] != self.num_rows:
            raise ValueError(f"a table guide of {self.num_rows} rows needs the row indices of a batch of "
                             f"{x.shape[0]}; pass index=")
        with data_plate(x):
            for name, (loc, scale) in self.moments(index).items():
                q = dist.Normal(loc, scale).to_event(loc.dim() - 1)
                if name in self.supports:
                    q = dist.TransformedDistribution(q, biject_to(self.supports[name]))
                pyro.sample(name, q)
