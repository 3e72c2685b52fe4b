"""The amortized Gaussian guide: q_φ(z | x) = N(μ_φ(x), diag σ_φ(x)²) (Kingma & Welling 2014).

One encoder MLP per latent layer, from the layer's parent (x, or an earlier latent site) to
loc and scale = softplus(·) + ``min_scale``: positive, smooth, and no exp overflow early in
training. For the two-layer model this is Burda et al.'s q(z1 | x) q(z2 | z1). A model that
supplies a feature network for its data (its ``features`` hook: a convolutional model's conv
layers) gets it in front of the MLP of every layer conditioned on x (:func:`encoder_nets`, which
every built-in guide with an encoder builds its encoders with).
"""
from __future__ import annotations

from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..core.contract import declared, required
from ..core.nets import mlp
from ..core.programs import LatentLayer, data_plate

MIN_SCALE = 1e-4
Features = Callable[[], tuple[nn.Module, int]]   # a model's ``features`` hook (pyrovae.core.contract.MODEL)


def built_from(model: object, guide: type) -> tuple[list[LatentLayer], int, Features | None]:
    """What the built-in guide ``guide`` with an encoder is built from: the model's latent layers,
    its ``data_dim`` and its ``features`` hook (:mod:`pyrovae.core.contract`); a
    :class:`UsageError` for a model that declares no layers or no ``data_dim``."""
    layers = required(model, "model", "latent_layers", guide.__name__)()
    return layers, required(model, "model", "data_dim", guide.__name__), declared(model, "model", "features")


def encoder_nets(layers: Sequence[LatentLayer], data_dim: int, outputs: Callable[[int], int],
                 features: Features | None = None) -> nn.ModuleDict:
    """One encoder per latent layer: an MLP from the layer's parent through its hidden widths to
    ``outputs(layer.dim)`` numbers (with the layer's activation and initialisation), behind a new
    network of the model's ``features`` for a layer conditioned on x (so the guide owns its own
    copy: the model's decoder shares nothing with it)."""
    dims = {"x": data_dim, **{layer.name: layer.dim for layer in layers}}
    nets = {}
    for layer in layers:
        front, width = features() if features is not None and layer.parent == "x" else (None, dims[layer.parent])
        head = mlp([width, *layer.hidden, outputs(layer.dim)], layer.activation, layer.init)
        nets[layer.name] = head if front is None else nn.Sequential(front, *head)   # the last layer stays [-1]
    return nn.ModuleDict(nets)


class AmortizedGuide(nn.Module):
    """q_φ(z | x), one diagonal Gaussian per latent layer, its parameters from an encoder."""

    cli_help = "an encoder gives a diagonal Gaussian"
    amortized = True
    per_datapoint = False

    def __init__(self, layers: Sequence[LatentLayer], data_dim: int, *, min_scale: float = MIN_SCALE,
                 features: Features | None = None):
        super().__init__()
        self.layers = list(layers)
        self.encoders = encoder_nets(self.layers, data_dim, self.encoder_outputs, features)
        self.min_scale = min_scale
        # sites independent given x: closed-form KL per site is exact
        self.mean_field = all(layer.parent == "x" for layer in self.layers)

    @classmethod
    def from_options(cls, options, model: nn.Module, num_data: int) -> "AmortizedGuide":
        layers, data_dim, features = built_from(model, cls)
        return cls(layers, data_dim, features=features)

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
