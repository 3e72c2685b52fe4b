"""Linear-Gaussian VAEs, whose log p(x), posterior and ELBO are known in closed form: the exact
answers that tests of several folders (evaluation, guides, inference, workflows) check estimates
against. A helper module, not a test module: the tests import it by name (``pythonpath`` in
pyproject.toml puts tests/ on sys.path), so each test file also runs alone.

The model z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D) (probabilistic PCA) has
p(x) = N(b, W Wᵀ + s² I) and posterior N(μ, Σ), Σ = (I + WᵀW / s²)⁻¹, μ = Σ Wᵀ (x - b) / s².
With orthogonal columns W = Q diag(c), Σ is diagonal, so the exact posterior is a valid
(loc, scale) proposal.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from pyrovae.core.programs import LatentLayer
from pyrovae.core.vae import VAE
from pyrovae.guides import AmortizedGuide
from pyrovae.models import VAEModel

# ---------------------------------------------------------------------------- a random W, in float64

F64 = torch.float64
D_LATENT, D_DATA = 2, 5


class LinearGaussian(NamedTuple):
    vae: VAE
    x: torch.Tensor
    log_px: np.ndarray       # exact log p(x_i)
    post_loc: torch.Tensor   # exact posterior mean per row
    post_cov: torch.Tensor   # exact posterior covariance (the same for every row)


def linear_gaussian(orthogonal: bool, n: int = 100, seed: int = 0, guide_hidden=(16,)) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the guide's initial weights
    model = VAEModel(D_LATENT, D_DATA, hidden=(), likelihood="normal", sigma=0.5)
    vae = VAE(model, AmortizedGuide([LatentLayer("z", D_LATENT, "x", guide_hidden)], D_DATA)).to(F64)
    decoder = model.decoder
    if orthogonal:
        q, _ = torch.linalg.qr(torch.randn(D_DATA, D_LATENT, generator=g, dtype=F64))
        w = q * torch.tensor([1.5, 0.8], dtype=F64)
    else:
        w = torch.randn(D_DATA, D_LATENT, generator=g, dtype=F64) * 0.7
    b = torch.randn(D_DATA, generator=g, dtype=F64)
    with torch.no_grad():
        decoder[0].weight.copy_(w)
        decoder[0].bias.copy_(b)
    s2 = model.likelihood.sigma().item() ** 2  # the stored log σ, not 0.5 rounded through float32
    marginal = torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(D_DATA, dtype=F64))
    x = marginal.sample((n,))
    post_cov = torch.linalg.inv(torch.eye(D_LATENT, dtype=F64) + w.T @ w / s2)
    post_loc = (x - b) @ w @ post_cov / s2
    return LinearGaussian(vae, x, marginal.log_prob(x).numpy(), post_loc, post_cov)


# ---------------------------------------------------------------------------- a fixed W, in float32:
# the diagonal q* (the best mean-field q) and the ELBO of any diagonal q in closed form

D, LATENT, SIGMA = 5, 2, 0.5
W = torch.tensor([[1.0, 0.8], [0.5, 1.0], [-0.3, 0.6], [0.9, 0.2], [0.0, -0.7]])   # non-orthogonal columns
B = torch.linspace(-0.5, 0.5, D)


def linear_gaussian_vae() -> VAE:
    model = VAEModel(LATENT, D, hidden=(), likelihood="normal", sigma=SIGMA)
    with torch.no_grad():
        model.decoder[0].weight.copy_(W)
        model.decoder[0].bias.copy_(B)
    return VAE(model, AmortizedGuide([LatentLayer("z", LATENT, "x", ())], D))


def optimal_diagonal_q(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q* for x = W z + b + σ ε: the posterior mean, and precisions diag(I + WᵀW / σ²)."""
    precision = torch.eye(LATENT) + W.T @ W / SIGMA ** 2
    mean = (x - B) @ W @ torch.linalg.inv(precision) / SIGMA ** 2
    return mean, precision.diag().rsqrt().expand_as(mean)


def exact_elbo(x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """E_q log N(x; W z + b, σ²) - KL(q || N(0, I)), in closed form."""
    var = scale ** 2
    residual = ((x - loc @ W.T - B) ** 2).sum(-1) + (var * (W ** 2).sum(0)).sum(-1)
    recon = -0.5 * D * math.log(2 * math.pi * SIGMA ** 2) - residual / (2 * SIGMA ** 2)
    kl = 0.5 * (loc ** 2 + var - 1 - var.log()).sum(-1)
    return recon - kl
