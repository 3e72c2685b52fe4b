"""The same VAE math written by hand in PyTorch, without Pyro: the speed reference.

It reuses pyrovae's torch modules (so the networks and their initialization are identical)
but computes each objective directly:

    trace:     -(N/B) Σ_i [log p(x_i | z_i) + log p(z_i) - log q(z_i | x_i)],  z_i ~ q
    meanfield: -(N/B) Σ_i [log p(x_i | z_i) - KL(q(z | x_i) || p(z))]         (closed-form KL)
    iwae:      -(N/B) Σ_i [logsumexp_k log w_ik - log K]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pyrovae.model import VAE

LOG_2PI = math.log(2 * math.pi)


def log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def log_likelihood(vae: VAE, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = vae.decoder(z)
    if vae.decoder.likelihood == "bernoulli":
        return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
    sigma = vae.decoder.sigma().expand_as(out)
    return log_normal(x, out, sigma)


def loss(vae: VAE, x: torch.Tensor, index: torch.Tensor, num_data: int, objective: str = "trace",
         particles: int = 1) -> torch.Tensor:
    loc, scale = vae.guide_module(x, index)
    eps = torch.randn((particles, *loc.shape), device=loc.device)
    z = loc + scale * eps                                   # [K, B, D]
    log_lik = log_likelihood(vae, z, x)                     # [K, B]
    if objective == "meanfield":
        kl = 0.5 * (loc ** 2 + scale ** 2 - 1).sum(-1) - scale.log().sum(-1)
        per_point = log_lik.mean(0) - kl
    else:
        log_w = log_lik + log_normal(z, torch.zeros_like(z), torch.ones_like(z)) - log_normal(z, loc, scale)
        per_point = log_w.mean(0) if objective == "trace" else torch.logsumexp(log_w, 0) - math.log(particles)
    return -(num_data / x.shape[0]) * per_point.sum()


def train_epoch(vae: VAE, optimizer: torch.optim.Optimizer, intensities: torch.Tensor, batch_size: int,
                generator: torch.Generator, objective: str = "trace", particles: int = 1) -> float:
    """One epoch of dynamically binarized data, as a hand-written loop would do it; returns the mean loss."""
    n = len(intensities)
    x_train = torch.bernoulli(intensities, generator=generator)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        index = order[start:start + batch_size]
        value = loss(vae, x_train[index], index, n, objective, particles)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        total += value.item() * len(index) / n
    return total / n


@torch.no_grad()
def test_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> float:
    """Mean per-datapoint ELBO with closed-form KL and one reconstruction sample."""
    total = 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        total -= loss(vae, batch, torch.arange(len(batch)), len(batch), "meanfield").item()
    return total / len(x)
