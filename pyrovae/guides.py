"""Variational families q(z | x) for the VAE: each maps a batch (x, row indices) to the
loc and scale of a diagonal Gaussian per datapoint.

- :class:`AmortizedGuide`: q_φ(z | x) = N(g_φ(x)), one encoder for all datapoints
  (Kingma & Welling 2014).
- :class:`MeanFieldGuide`: q_i(z) = N(loc_i, exp(log_scale_i)), free parameters per
  datapoint, i.e. classical mean-field VI with local parameters (Hoffman et al. 2013).

The gap between the best q_i and the encoder's q_φ(z | x_i) is the amortization gap
(Cremer, Li & Duvenaud 2018, "Inference Suboptimality in Variational Autoencoders").
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .model import mlp


class AmortizedGuide(nn.Module):
    """g_φ: x -> (loc, scale); ``index`` is ignored (the encoder needs only x)."""

    def __init__(self, data_dim: int, latent_dim: int, hidden: Sequence[int] = (400,),
                 min_scale: float = 1e-4):
        super().__init__()
        self.net = mlp([data_dim, *hidden, 2 * latent_dim])
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.net(x).chunk(2, dim=-1)
        # softplus plus a floor: positive, smooth, and no exp overflow early in training.
        return loc, nn.functional.softplus(raw_scale) + self.min_scale


class MeanFieldGuide(nn.Module):
    """(loc_i, log_scale_i) for every row i of a data set of ``num_data`` points.

    Initialized at q_i = N(0, I), the prior. ``x`` is ignored: only the row indices matter.
    """

    def __init__(self, num_data: int, latent_dim: int, init_scale: float = 1.0):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(num_data, latent_dim))
        self.log_scale = nn.Parameter(torch.full((num_data, latent_dim), float(torch.tensor(init_scale).log())))

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            if x.shape[0] != self.loc.shape[0]:
                raise ValueError("MeanFieldGuide needs the row indices of a minibatch")
            return self.loc, self.log_scale.exp()
        return self.loc[index], self.log_scale[index].exp()
