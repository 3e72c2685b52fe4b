"""A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016, section 5):

    z2 ~ N(0, I)
    z1 | z2 ~ N(μ(z2), diag σ(z2)²)        MLP z2 -> upper hidden -> (μ, σ)
    x | z1 ~ Bernoulli(logits = f(z1)), or Normal(f(z1), σ)

with the guide q(z1 | x) q(z2 | z1). Burda et al.'s MNIST sizes: 100 units in z1 with two
hidden layers of 200 between x and z1, 50 units in z2 with two hidden layers of 100 between z1
and z2. σ(·) is softplus + 1e-4 here (they used exp); the hidden units are ReLU by default
(``--activation tanh`` is theirs, as ``--preset burda-2layer`` sets). The prior of z1 depends
on z2, so no closed-form KL: the ELBO is Monte Carlo.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..core.nets import mlp
from ..core.programs import LatentLayer, data_plate
from ..core.options import default_of, option, parse_widths, size, values, widths
from .likelihoods import LIKELIHOODS
from .vae import VAEOptions

MIN_SCALE = 1e-4


OUTPUT_BIASES = ("zero", "data-mean")


@dataclass
class TwoLayerOptions(VAEOptions):
    """The decoder's options and the bottom layer z1's."""

    z1_dim: int = option(100, "Units of the bottom layer z1.", check=size)
    z1_hidden: tuple[int, ...] = option((100, 100), "Hidden widths between z1 and z2.", parse=parse_widths,
                                        check=widths)
    output_bias: str = option("zero", "The decoder's last bias when a new run starts: zero, or data-mean (each "
                              "number's training mean, for bernoulli its logit clipped to [0.001, 0.999]: Burda "
                              "et al.'s; without it their recipe collapses to the pixels' marginals).",
                              choices=OUTPUT_BIASES)


class TwoLayerModel(nn.Module):
    """p(z2) p(z1 | z2) p(x | z1); ``decoder`` is z1 -> x, ``prior_net`` is z2 -> (μ, σ) of z1."""

    cli_help = "z2 -> z1 -> x (Burda et al. 2016)"
    Options = TwoLayerOptions

    def __init__(self, latent_dim: int, data_dim: int, *,
                 hidden: Sequence[int] = default_of(TwoLayerOptions, "hidden"),
                 z1_dim: int = default_of(TwoLayerOptions, "z1_dim"),
                 z1_hidden: Sequence[int] = default_of(TwoLayerOptions, "z1_hidden"),
                 likelihood: str = default_of(TwoLayerOptions, "likelihood"),
                 sigma: str | float = default_of(TwoLayerOptions, "sigma"),
                 activation: str = default_of(TwoLayerOptions, "activation"),
                 init: str = default_of(TwoLayerOptions, "init"),
                 output_bias: str = default_of(TwoLayerOptions, "output_bias")):
        """The defaults are :class:`TwoLayerOptions`'."""
        super().__init__()
        self.latent_dim, self.z1_dim, self.data_dim = latent_dim, z1_dim, data_dim
        self.hidden, self.z1_hidden = tuple(hidden), tuple(z1_hidden)
        self.activation, self.init = activation, init
        self.prior_net = mlp([latent_dim, *z1_hidden, 2 * z1_dim], activation, init)
        self.decoder = mlp([z1_dim, *hidden, data_dim], activation, init)
        self.likelihood = LIKELIHOODS[likelihood](data_dim, sigma)
        self.output_bias = output_bias

    @classmethod
    def from_options(cls, options: TwoLayerOptions, data_dim: int, image_shape: tuple[int, ...] | None = None
                     ) -> "TwoLayerModel":
        return cls(options.latent_dim, data_dim, **values(options, without=("latent_dim",)))

    def initialize_from_data(self, x: torch.Tensor) -> None:
        """``output_bias="data-mean"``: the decoder's last bias from a new run's training rows ``x``,
        so the first steps need not learn the pixels' marginals through z1 (Burda et al.'s iwae.py)."""
        if self.output_bias == "zero":
            return
        bias = self.likelihood.output_for(x.double().mean(0))
        last = [m for m in self.decoder.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias.copy_(bias)

    def latent_layers(self) -> list[LatentLayer]:
        """The guide's order: z1 from x, then z2 from z1."""
        return [LatentLayer("z1", self.z1_dim, "x", self.hidden, self.activation, self.init),
                LatentLayer("z2", self.latent_dim, "z1", self.z1_hidden, self.activation, self.init)]

    def forward(self, x: torch.Tensor) -> None:
        zeros = x.new_zeros(self.latent_dim)
        with data_plate(x):
            z2 = pyro.sample("z2", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            loc, raw_scale = self.prior_net(z2).chunk(2, dim=-1)
            z1 = pyro.sample("z1", dist.Normal(loc, nn.functional.softplus(raw_scale) + MIN_SCALE).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z1)), obs=x)
