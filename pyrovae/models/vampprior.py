"""The VampPrior (Tomczak & Welling 2018, "VAE with a VampPrior"): the prior is the mixture of
the guide's own posteriors at K learned pseudo-inputs u_k,

    p_λ(z) = (1/K) Σ_k q_φ(z | u_k),        x | z ~ Bernoulli(logits = f_θ(z))  (or Normal),

so the prior is learned with the encoder it is coupled to (the same φ), and the KL term pulls
each q(z | x) towards the posteriors of a few "typical" inputs instead of towards N(0, I).
The pseudo-inputs are data-shaped parameters, clamped to [0, 1] (the paper's hardtanh) and
initialized around 0.05 (σ = 0.01), as in the authors' code; K = 500 on MNIST in the paper.
The KL of a mixture prior has no closed form: ELBOs estimate it by Monte Carlo.

With diagonal Gaussian components (the amortized guide) the mixture's log-density is computed
as two matrix products instead of a [..., K, D] broadcast,

    Σ_d (z_d − μ_kd)² / σ_kd² = (z ∘ z) · (1/σ_k²) − 2 z · (μ_k/σ_k²) + Σ_d μ_kd²/σ_kd²,

in float64 (the three terms are large and nearly cancel where z is near μ_k): importance
sampling with 5000 draws per point at K = 500 otherwise needs tens of GB and hours.

The guide must say what q(z | parent) is for any input, with a density that needs no inversion
(its ``site_dist``: amortized, full-covariance; not a flow); its parameters then serve both
programs. One file and one registry line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from ..core.contract import declared
from ..core.options import default_of, option, size
from ..core.programs import data_plate
from .vae import VAEModel, VAEOptions


@dataclass
class VampPriorOptions(VAEOptions):
    pseudo_inputs: int = option(500, "Pseudo-inputs u_k whose posteriors q(z | u_k) make the prior (K).", check=size)


class DiagonalGaussianMixture(dist.TorchDistribution):
    """(1/K) Σ_k N(z; μ_k, diag σ_k²) for loc, scale of shape [K, D]; batch shape (), event [D]."""

    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real_vector

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, validate_args=None):
        self.loc, self.scale = loc, scale
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=validate_args)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        with torch.no_grad():
            k = torch.randint(self.loc.shape[0], sample_shape, device=self.loc.device)
            return self.loc[k] + self.scale[k] * torch.randn(k.shape + self.event_shape, dtype=self.loc.dtype,
                                                             device=self.loc.device)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        z, loc = value.double(), self.loc.double()
        precision = self.scale.double().pow(-2)                                      # [K, D]
        squared = (z * z) @ precision.T - 2 * z @ (loc * precision).T + (loc * loc * precision).sum(-1)
        log_normalizer = -self.scale.double().log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)
        log_density = torch.logsumexp(log_normalizer - 0.5 * squared, -1) - math.log(loc.shape[0])
        return log_density.to(value.dtype)


class VampPriorModel(VAEModel):
    """p_λ(z) p_θ(x | z) with p_λ(z) the mixture of the guide's q(z | u_k) over K pseudo-inputs."""

    cli_help = "z -> x, the prior a mixture of the guide's posteriors at --pseudo-inputs learned inputs (Tomczak & Welling 2018)"
    Options = VampPriorOptions

    def __init__(self, latent_dim: int, data_dim: int, *,
                 pseudo_inputs: int = default_of(VampPriorOptions, "pseudo_inputs"), **options: Any):
        """``options``: :class:`VAEModel`'s keywords (``hidden``, ``likelihood``, ...); ``from_options``
        is its too."""
        super().__init__(latent_dim, data_dim, **options)
        self.pseudo_inputs = nn.Parameter(0.05 + 0.01 * torch.randn(pseudo_inputs, data_dim))
        object.__setattr__(self, "_q", None)   # the guide's q(z | ·): not a submodule, its parameters are the guide's

    def attach_guide(self, guide: nn.Module) -> None:
        site_dist = declared(guide, "guide", "site_dist")
        if site_dist is None:
            raise ValueError("the VampPrior mixes the guide's q(z | u) at its pseudo-inputs, so the guide needs an "
                             "encoder that gives q for any input; use --guide amortized or full-covariance")
        with torch.no_grad():
            probe = site_dist("z", self.pseudo_inputs[:1])
        if isinstance(probe, torch.distributions.TransformedDistribution):
            raise ValueError("the VampPrior evaluates q(z | u_k) at every z, which a flow can only do by inverting "
                             "itself, one dimension at a time; use --guide amortized or full-covariance")
        object.__setattr__(self, "_q", site_dist)

    def prior(self) -> dist.Distribution:
        """(1/K) Σ_k q(z | u_k), u_k = clamp(pseudo-input k, 0, 1)."""
        if self._q is None:
            raise RuntimeError("a VampPrior model needs its guide: build them together (VAE of build_vae)")
        components = self._q("z", self.pseudo_inputs.clamp(0.0, 1.0))   # batch [K], event [latent_dim]
        base = getattr(components, "base_dist", None)
        if isinstance(base, torch.distributions.Normal) and components.reinterpreted_batch_ndims == 1:
            return DiagonalGaussianMixture(base.loc, base.scale)
        weights = dist.Categorical(logits=self.pseudo_inputs.new_zeros(self.pseudo_inputs.shape[0]))
        return dist.MixtureSameFamily(weights, components)

    def forward(self, x: torch.Tensor) -> None:
        prior = self.prior()
        with data_plate(x):
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
