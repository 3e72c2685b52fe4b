"""An amortized full-covariance Gaussian guide: a Cholesky factor per point.

For each latent layer the encoder gives μ(x), a positive diagonal and the d(d-1)/2 entries below
it of a lower-triangular L(x), and

    q_φ(z | x) = N(μ(x), L(x) L(x)ᵀ),   L_ii = softplus(·) + min_scale,

so q can tilt along the posterior's correlations, which a diagonal Gaussian (FFG) cannot. The
encoder's last layer grows from 2d to 2d + d(d-1)/2 outputs (1,325 for d = 50).

The KL to the model's diagonal Gaussian p(z) = N(m, diag s²) has a closed form,

    KL = ½ [ Σ_ij L_ij² / s_i² + Σ_i (μ_i - m_i)² / s_i² - d + 2 Σ_i log s_i - 2 Σ_i log L_ii ],

which torch does not register for (MultivariateNormal, Independent Normal). This module
registers it for :class:`CholeskyNormal`, the MultivariateNormal of pyrovae's own that these
guides draw from, so TraceMeanField_ELBO and pyrovae's per-point ELBO use it, while importing
pyrovae leaves torch's dispatch for torch's and Pyro's classes (and a user's own pairs) as it was.

The test-time fit of ``compare`` uses the same family per point (:class:`PerPointFullCovGuide`:
its own μ_i and L_i for every row), so the approximation gap is the full-covariance one.
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import Independent, Normal, register_kl
from torch.distributions.utils import vec_to_tril_matrix

from ..core.programs import LatentLayer, data_plate
from .amortized import MIN_SCALE, AmortizedGuide, Features


def scale_tril(diagonal: torch.Tensor, below: torch.Tensor) -> torch.Tensor:
    """The lower-triangular [..., d, d] with ``diagonal`` [..., d] and the d(d-1)/2 entries ``below``
    it, row by row."""
    return vec_to_tril_matrix(below, diag=-1) + torch.diag_embed(diagonal)


class CholeskyNormal(dist.MultivariateNormal):
    """N(μ, LLᵀ) given L (``scale_tril``): Pyro's MultivariateNormal under a class pyrovae owns,
    which the closed-form KL below is registered for."""


@register_kl(CholeskyNormal, Independent)
def _kl_mvn_diagonal_normal(q: CholeskyNormal, p: Independent) -> torch.Tensor:
    if not (isinstance(p.base_dist, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    s = p.base_dist.scale.expand(q.loc.shape)
    trace = (q.scale_tril.pow(2).sum(-1) / s.pow(2)).sum(-1)   # Σ_i (LLᵀ)_ii / s_i²
    mahalanobis = ((q.loc - p.base_dist.loc) / s).pow(2).sum(-1)
    log_det = 2 * s.log().sum(-1) - 2 * q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1] + log_det)


class FullCovarianceGuide(AmortizedGuide):
    """q_φ(z | x) = N(μ_φ(x), L_φ(x) L_φ(x)ᵀ), one per latent layer, from an encoder: an
    :class:`AmortizedGuide` whose encoders also give the entries below L's diagonal."""

    cli_help = "an encoder gives a Gaussian with a full covariance (a Cholesky factor per point)"

    def __init__(self, layers: Sequence[LatentLayer], data_dim: int, *, min_scale: float = MIN_SCALE,
                 features: Features | None = None):
        super().__init__(layers, data_dim, min_scale=min_scale, features=features)
        self.dims = {layer.name: layer.dim for layer in self.layers}
        # the entries below the diagonal start at zero: q starts as the diagonal Gaussian and learns
        # correlations from there (random ones inflate every marginal variance, by up to d-1 terms)
        with torch.no_grad():
            for layer in self.layers:
                last = self.encoders[layer.name][-1]
                last.weight[2 * layer.dim:].zero_()
                last.bias[2 * layer.dim:].zero_()

    @staticmethod
    def encoder_outputs(dim: int) -> int:
        """loc, raw diagonal, and the d(d-1)/2 entries below the diagonal."""
        return 2 * dim + dim * (dim - 1) // 2

    def encode(self, name: str, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, L) of q(name | parent)."""
        dim = self.dims[name]
        loc, raw_diagonal, below = self.encoders[name](parent).split([dim, dim, dim * (dim - 1) // 2], dim=-1)
        return loc, scale_tril(nn.functional.softplus(raw_diagonal) + self.min_scale, below)

    def site_dist(self, name: str, parent: torch.Tensor) -> dist.Distribution:
        loc, tril = self.encode(name, parent)
        return CholeskyNormal(loc, scale_tril=tril)

    def local_family(self, batch: Sequence[torch.Tensor], init: str) -> "PerPointFullCovGuide":
        """Per-point full-covariance Gaussians for the rows of ``batch``: from the encoder's q
        (``init="q"``; a deeper layer conditioned on its parent's mean) or N(0, I) (``init="prior"``)."""
        x = batch[0]
        table = PerPointFullCovGuide({layer.name: layer.dim for layer in self.layers}, x.shape[0]).to(x)
        if init == "q":
            with torch.no_grad():
                values = {"x": x}
                for layer in self.layers:
                    loc, tril = self.encode(layer.name, values[layer.parent])
                    table.set_rows(layer.name, loc, tril)
                    values[layer.name] = loc
        return table


class PerPointFullCovGuide(nn.Module):
    """Row i, site s: q_i(s) = N(loc_i, L_i L_iᵀ) with L_i = tril(below_i, -1) + diag(exp(log_diagonal_i)).
    Sites and rows are independent."""

    amortized = False
    per_datapoint = True
    mean_field = True

    def __init__(self, sites: dict[str, int], num_rows: int):
        super().__init__()
        self.sites, self.num_rows = dict(sites), num_rows
        self.loc = nn.ParameterDict({n: nn.Parameter(torch.zeros(num_rows, d)) for n, d in sites.items()})
        self.log_diagonal = nn.ParameterDict({n: nn.Parameter(torch.zeros(num_rows, d)) for n, d in sites.items()})
        self.below = nn.ParameterDict({n: nn.Parameter(torch.zeros(num_rows, d * (d - 1) // 2))
                                       for n, d in sites.items()})

    @torch.no_grad()
    def set_rows(self, name: str, loc: torch.Tensor, tril: torch.Tensor) -> None:
        """All rows of site ``name`` from (μ [N, d], L [N, d, d])."""
        rows, cols = torch.tril_indices(loc.shape[-1], loc.shape[-1], offset=-1, device=loc.device)
        self.loc[name].copy_(loc)
        self.log_diagonal[name].copy_(tril.diagonal(dim1=-2, dim2=-1).log())
        self.below[name].copy_(tril[..., rows, cols])

    def row_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def scale_tril(self, name: str, rows: torch.Tensor | slice = slice(None)) -> torch.Tensor:
        return scale_tril(self.log_diagonal[name][rows].exp(), self.below[name][rows])

    def moments(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(mean, marginal standard deviation) per site, all rows."""
        return {name: (self.loc[name], self.scale_tril(name).pow(2).sum(-1).sqrt()) for name in self.sites}

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> None:
        rows = torch.arange(x.shape[0], device=x.device) if index is None else index
        with data_plate(x):
            for name in self.sites:
                pyro.sample(name, CholeskyNormal(self.loc[name][rows], scale_tril=self.scale_tril(name, rows)))


__all__ = ["CholeskyNormal", "FullCovarianceGuide", "PerPointFullCovGuide", "scale_tril"]
