"""The amortized Gaussian guide: q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²) (Kingma & Welling 2014).

One encoder MLP per latent layer, from the layer's parent (x, or an earlier latent site) to
loc and scale = softplus(·) + ``min_scale``: positive, smooth, and no exp overflow early in
training. For the two-layer model this is Burda et al.'s q(z1 | x) q(z2 | z1).
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..core.nets import mlp
from ..core.programs import LatentLayer, data_plate

MIN_SCALE = 1e-4


class AmortizedGuide(nn.Module):
    """q_φ(z | x), one diagonal Gaussian per latent layer, its parameters from an encoder."""

    cli_help = "an encoder gives a diagonal Gaussian"
    amortized = True
    per_datapoint = False

    def __init__(self, layers: Sequence[LatentLayer], data_dim: int, min_scale: float = MIN_SCALE):
        super().__init__()
        self.layers = list(layers)
        dims = {"x": data_dim, **{layer.name: layer.dim for layer in self.layers}}
        self.encoders = nn.ModuleDict({layer.name: mlp([dims[layer.parent], *layer.hidden,
                                                        self.encoder_outputs(layer.dim)])
                                       for layer in self.layers})
        self.min_scale = min_scale
        # sites independent given x: closed-form KL per site is exact
        self.mean_field = all(layer.parent == "x" for layer in self.layers)

    @classmethod
    def from_options(cls, options, model: nn.Module, num_data: int) -> "AmortizedGuide":
        return cls(model.latent_layers(), model.data_dim)

    @staticmethod
    def encoder_outputs(dim: int) -> int:
        """Outputs of a layer's encoder: loc and raw scale."""
        return 2 * dim

    def encode(self, name: str, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(name | parent)."""
        loc, raw_scale = self.encoders[name](parent).chunk(2, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + self.min_scale

    def site_dist(self, name: str, parent: torch.Tensor) -> dist.Distribution:
        """q(name | parent)."""
        loc, scale = self.encode(name, parent)
        return dist.Normal(loc, scale).to_event(1)

    def forward(self, x: torch.Tensor) -> None:
        values = {"x": x}
        with data_plate(x):
            for layer in self.layers:
                values[layer.name] = pyro.sample(layer.name, self.site_dist(layer.name, values[layer.parent]))
