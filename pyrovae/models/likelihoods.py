"""Likelihoods p_θ(x | f_θ(z)): the last layer of a decoder, with the pixels as one event.

- ``bernoulli``: x | z ~ Bernoulli(logits = f_θ(z)), for binary images.
- ``normal``:    x | z ~ Normal(f_θ(z), σ), σ fixed (σ = 1/√2 makes -log p(x|z) the MSE up to a
  constant), ``learned`` (one scalar) or ``learned-pixel`` (one per dimension), floored at
  ``MIN_SIGMA`` so a learned σ cannot collapse onto a single pixel value.

A likelihood is registered by name in ``LIKELIHOODS``; the CLI's ``--likelihood`` choices come
from there.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

from ..core.errors import UsageError, option

MIN_SIGMA = 1e-3


def parse_sigma(sigma: str | float) -> float | str:
    """``sigma`` option: a positive number (fixed), ``learned`` (one scalar) or ``learned-pixel``."""
    if isinstance(sigma, str) and sigma in ("learned", "learned-pixel"):
        return sigma
    value = float(sigma)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"sigma must be a positive number, 'learned' or 'learned-pixel', got {sigma!r}")
    return value


def check_sigma(sigma: str | float) -> None:
    """Refuse a ``sigma`` option that is not a positive number, 'learned' or 'learned-pixel'."""
    try:
        parse_sigma(sigma)
    except ValueError:
        raise UsageError(f"{option('sigma', sigma)} is not a positive number, 'learned' or 'learned-pixel'") from None


class Bernoulli(nn.Module):
    """Bernoulli(logits).to_event(1); needs data in [0, 1]."""

    data_range = (0.0, 1.0)

    def __init__(self, data_dim: int, sigma: str | float | None = None):
        super().__init__()

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Bernoulli(logits=out).to_event(1)

    def output_for(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose distribution has mean ``mean``: its logit, clipped to [0.001,
        0.999] as Burda et al.'s code does (a pixel that is always 0 would need -inf)."""
        return torch.logit(mean.clamp(0.001, 0.999))


class Normal(nn.Module):
    """Normal(out, σ).to_event(1) with σ fixed or learned."""

    data_range = None

    def __init__(self, data_dim: int, sigma: str | float):
        super().__init__()
        self.sigma_mode = parse_sigma(sigma)
        if self.sigma_mode == "learned":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        elif self.sigma_mode == "learned-pixel":
            self.log_sigma = nn.Parameter(torch.zeros(data_dim))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(self.sigma_mode)))

    def sigma(self) -> torch.Tensor:
        return self.log_sigma.exp().clamp(min=MIN_SIGMA)

    def forward(self, out: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(out, self.sigma().expand_as(out)).to_event(1)

    def output_for(self, mean: torch.Tensor) -> torch.Tensor:
        """The decoder output whose distribution has mean ``mean``: the mean itself."""
        return mean


LIKELIHOODS: dict[str, type[nn.Module]] = {"bernoulli": Bernoulli, "normal": Normal}
