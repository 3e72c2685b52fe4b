"""The VAE's generative model p_θ(x, z) = p(z) p_θ(x | z), as a Pyro program.

    z ~ N(0, I_d)
    x | z ~ Bernoulli(logits = f_θ(z))     (binary images), or
    x | z ~ Normal(f_θ(z), σ)              (σ fixed or learned)

f_θ is an MLP; with no hidden layers it is affine and the model is probabilistic PCA
(Tipping & Bishop 1999), whose log p(x) and posterior are known in closed form.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes".
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..core.nets import mlp
from ..core.programs import LatentLayer, data_plate
from .likelihoods import LIKELIHOODS


class VAEModel(nn.Module):
    """p(z) p_θ(x | z) with one latent site ``z``; ``decoder`` is f_θ and ``likelihood`` its head."""

    cli_help = "z -> x"
    mean_field = True   # p(z) depends on no other latent site

    def __init__(self, latent_dim: int, data_dim: int, hidden: Sequence[int] = (400,),
                 likelihood: str = "bernoulli", sigma: str | float = 1.0):
        super().__init__()
        self.latent_dim, self.data_dim, self.hidden = latent_dim, data_dim, tuple(hidden)
        self.decoder = mlp([latent_dim, *hidden, data_dim])
        self.likelihood = LIKELIHOODS[likelihood](data_dim, sigma)

    @classmethod
    def from_config(cls, config, data_dim: int) -> "VAEModel":
        return cls(config.latent_dim, data_dim, config.hidden, config.likelihood, config.sigma)

    def latent_layers(self) -> list[LatentLayer]:
        """The guide's order: z from x."""
        return [LatentLayer("z", self.latent_dim, "x", self.hidden)]

    def forward(self, x: torch.Tensor) -> None:
        zeros = x.new_zeros(self.latent_dim)
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
