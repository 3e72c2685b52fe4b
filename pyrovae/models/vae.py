"""The VAE's generative model p_θ(x, z) = p(z) p_θ(x | z), as a Pyro program.

    z ~ N(0, I_d)
    x | z ~ Bernoulli(logits = f_θ(z))     (binary images), or
    x | z ~ Normal(f_θ(z), σ)              (σ fixed or learned)

f_θ is an MLP (``--activation`` between its layers, ``--init`` its initial weights:
:mod:`pyrovae.core.nets`; the guides' encoders take the same); with no hidden layers it is
affine and the model is probabilistic PCA (Tipping & Bishop 1999), whose log p(x) and posterior
are known in closed form.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes".
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..core.nets import ACTIVATIONS, INITS, initialize, mlp
from ..core.options import Options, default_of, option, parse_widths, size, values, widths
from ..core.programs import LatentLayer, data_plate
from .likelihoods import LIKELIHOODS, check_sigma


@dataclass
class VAEOptions(Options):
    """The decoder's options: the options of every built-in model (a model with more extends them)."""

    latent_dim: int = option(50, "Dimensions of the latent z (of the top layer z2 for --model two-layer).", check=size)
    hidden: tuple[int, ...] = option((400,), "Comma list of hidden widths between x and the first latent layer "
                                     "(encoder and decoder); '' for linear.", parse=parse_widths, check=widths)
    likelihood: str = option("bernoulli", "p(x | z): bernoulli for binary images (pixels in [0, 1]), normal for "
                             "real-valued data.", choices=lambda: list(LIKELIHOODS))
    sigma: str = option("1.0", "--likelihood normal only: a fixed sigma (0.7071 makes -log p(x|z) the squared "
                        "error), 'learned' (one scalar) or 'learned-pixel' (one per dimension).")
    activation: str = option("relu", "The nonlinearity between the hidden layers of the decoder and of the guide's "
                             "encoders: relu, tanh (Burda et al. 2016) or elu (Cremer et al. 2018).",
                             choices=ACTIVATIONS)
    init: str = option("torch", "Initial weights of the decoder and the encoders: torch (PyTorch's default) or "
                       "glorot (uniform in +-sqrt(6 / (fan_in + fan_out)), zero biases; Burda et al. 2016).",
                       choices=INITS)

    def check(self) -> None:
        if self.likelihood == "normal":
            check_sigma(self.sigma)


class VAEModel(nn.Module):
    """p(z) p_θ(x | z) with one latent site ``z``; ``decoder`` is f_θ and ``likelihood`` its head."""

    cli_help = "z -> x"
    Options = VAEOptions

    def __init__(self, latent_dim: int, data_dim: int, *, hidden: Sequence[int] = default_of(VAEOptions, "hidden"),
                 likelihood: str = default_of(VAEOptions, "likelihood"),
                 sigma: str | float = default_of(VAEOptions, "sigma"), decoder: nn.Module | None = None,
                 activation: str = default_of(VAEOptions, "activation"), init: str = default_of(VAEOptions, "init")):
        """``decoder``: f_θ from z [..., latent_dim] to [..., data_dim] (default: the MLP of ``hidden``
        with ``activation``); ``init`` initialises it either way. The other defaults are
        :class:`VAEOptions`'."""
        super().__init__()
        self.latent_dim, self.data_dim, self.hidden = latent_dim, data_dim, tuple(hidden)
        self.activation, self.init = activation, init
        self.decoder = initialize(mlp([latent_dim, *hidden, data_dim], activation) if decoder is None else decoder,
                                  init)
        self.likelihood = LIKELIHOODS[likelihood](data_dim, sigma)

    @classmethod
    def from_options(cls, options: VAEOptions, data_dim: int, image_shape: tuple[int, ...] | None = None
                     ) -> "VAEModel":
        return cls(options.latent_dim, data_dim, **values(options, without=("latent_dim",)))

    def latent_layers(self) -> list[LatentLayer]:
        """The guide's order: z from x."""
        return [LatentLayer("z", self.latent_dim, "x", self.hidden, self.activation, self.init)]

    def forward(self, x: torch.Tensor) -> None:
        zeros = x.new_zeros(self.latent_dim)
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
