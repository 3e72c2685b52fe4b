"""The generative model p_θ(x, z) = p(z) p_θ(x | z) of the VAE, as a Pyro program.

    z ~ N(0, I_d)
    x | z ~ Bernoulli(logits = f_θ(z))          (binary images), or
    x | z ~ Normal(f_θ(z), σ),  σ fixed or learned

With σ = 1/sqrt(2), -log p(x|z) = ||x - f_θ(z)||² + const, i.e. the MSE loss.
With an empty hidden list, f_θ is affine and the model is probabilistic PCA
(Tipping & Bishop 1999), whose log p(x) is known in closed form.

Kingma & Welling (2014), "Auto-Encoding Variational Bayes".
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

LIKELIHOODS = ("bernoulli", "normal")
MIN_SIGMA = 1e-3


class ReLU(nn.ReLU):
    """max(x, 0), in place when no gradient is recorded (evaluation: one [batch, hidden] buffer
    less per layer and pass), out of place otherwise, as autograd and Pyro's JIT traces need."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return torch.relu(x)
        return x.relu_()


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Affine layers between consecutive ``sizes`` with ReLU in between (none after the last)."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(ReLU())
        layers.append(nn.Linear(fan_in, fan_out))
    return nn.Sequential(*layers)


def parse_sigma(sigma: str | float) -> float | str:
    """``sigma`` option: a positive number (fixed), ``learned`` (one scalar) or ``learned-pixel``."""
    if isinstance(sigma, str) and sigma in ("learned", "learned-pixel"):
        return sigma
    value = float(sigma)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"sigma must be a positive number, 'learned' or 'learned-pixel', got {sigma!r}")
    return value


class Decoder(nn.Module):
    """f_θ: z -> pixel logits (Bernoulli) or means (Normal), plus σ for the Normal likelihood.

    Accepts any leading batch dims on z, e.g. [particles, batch, latent_dim].
    """

    def __init__(self, latent_dim: int, data_dim: int, hidden: Sequence[int] = (400,),
                 likelihood: str = "bernoulli", sigma: float | str = 1.0):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {likelihood!r}; choose one of {LIKELIHOODS}")
        self.likelihood = likelihood
        self.net = mlp([latent_dim, *hidden, data_dim])
        self.sigma_mode = parse_sigma(sigma) if likelihood == "normal" else None
        if self.sigma_mode == "learned":
            self.log_sigma = nn.Parameter(torch.zeros(()))
        elif self.sigma_mode == "learned-pixel":
            self.log_sigma = nn.Parameter(torch.zeros(data_dim))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(self.sigma_mode or 1.0)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)

    def sigma(self) -> torch.Tensor:
        # The floor keeps a learned σ from collapsing onto a single pixel value.
        return self.log_sigma.exp().clamp(min=MIN_SIGMA)

    def likelihood_dist(self, z: torch.Tensor) -> dist.TorchDistribution:
        """p_θ(x | z), with the pixels as one event."""
        out = self(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.sigma().expand_as(out)).to_event(1)


@contextlib.contextmanager
def frozen(module: torch.nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside the block: e.g. only the local q moves.
    (Eval mode too, which also tells pyro.module not to register the frozen parameters.)"""
    flags, training = [(p, p.requires_grad) for p in module.parameters()], module.training
    for p, _ in flags:
        p.requires_grad_(False)
    module.train(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)


def data_plate(x: torch.Tensor, index: torch.Tensor | None, num_data: int | None) -> pyro.plate:
    """The plate over datapoints. With ``index`` (rows of a data set of ``num_data`` points),
    Pyro scales every log-density inside by num_data / len(index), so the loss estimates the
    ELBO of the whole data set."""
    if index is None:
        index = torch.arange(x.shape[0], device=x.device)
    return pyro.plate("data", size=num_data or x.shape[0], subsample=index, dim=-1)


class VAE(nn.Module):
    """The decoder p_θ(x | z) with its prior, and a guide q(z | x): ``vae.model`` and ``vae.guide``
    are the Pyro model and guide, with the signature ``(x, index=None, beta=1.0, num_data=None)``: tensors
    first, so the JIT objectives can trace them, and ``num_data`` as a keyword.

    ``guide`` is an :class:`~pyrovae.guides.AmortizedGuide` (an encoder network) or a
    :class:`~pyrovae.guides.MeanFieldGuide` (free parameters per datapoint).
    """

    def __init__(self, decoder: Decoder, guide: nn.Module):
        super().__init__()
        self.decoder = decoder
        self.guide_module = guide
        # pyro.module puts the parameters in Pyro's param store, for pyro.infer.SVI and the JIT
        # ELBOs; pyrovae's trainer steps a torch optimizer on vae.parameters() and skips it.
        self.register_params = True

    @property
    def latent_dim(self) -> int:
        return self.decoder.net[0].in_features

    def prior(self, like: torch.Tensor) -> dist.TorchDistribution:
        zeros = like.new_zeros(self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros)).to_event(1)

    def model(self, x: torch.Tensor, index: torch.Tensor | None = None,
              beta: float | torch.Tensor = 1.0, num_data: int | None = None) -> None:
        """p(z) p_θ(x | z) for a batch x of shape [batch, data_dim].

        ``beta`` scales the latent site here and in the guide, so the objective is
        reconstruction - beta * KL (Higgins et al. 2017); 1.0 is the true ELBO.
        """
        if self.register_params:
            pyro.module("decoder", self.decoder)
        with data_plate(x, index, num_data):
            with poutine.scale(scale=beta):
                z = pyro.sample("z", self.prior(x))
            pyro.sample("x", self.decoder.likelihood_dist(z), obs=x)

    def guide(self, x: torch.Tensor, index: torch.Tensor | None = None,
              beta: float | torch.Tensor = 1.0, num_data: int | None = None) -> None:
        """q(z | x) = N(z; loc, diag(scale²)), one diagonal Gaussian per datapoint."""
        if self.register_params:
            pyro.module("guide", self.guide_module)
        with data_plate(x, index, num_data) as idx:
            loc, scale = self.guide_module(x, idx)
            with poutine.scale(scale=beta):
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
