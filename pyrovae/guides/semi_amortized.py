"""The semi-amortized Gaussian guide (Kim, Wiseman, Miller, Sontag & Rush 2018, "Semi-Amortized
Variational Autoencoders"): the encoder's q_0(z | x) = N(μ_φ(x), σ_φ(x)²), refined by K
gradient steps on the datapoint's own ELBO with the model frozen,

    (μ, log σ)_{k+1} = (μ, log σ)_k + η clip(∇ ELBO(x; μ_k, σ_k)),     q(z | x) = N(μ_K, σ_K²),

each step's reconstruction term estimated from one draw with fixed noise ε_k (the same for every
datapoint and call), so q_K is a deterministic function of x: a proper amortized guide that
evaluates, resumes and batches like the encoder alone. The model is trained on q_K. The encoder
gets the gradient at q_K as if the refinement were a constant shift (∂q_K/∂q_0 ≈ I), the
first-order form of SA-VAE's backpropagation through the refinement, which avoids its
Hessian-vector products.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from ..core.contract import declared
from ..core.options import Options, between, default_of, option, positive
from ..core.programs import LatentLayer, bind, data_plate
from ..core.traces import sample_sites
from .amortized import AmortizedGuide, built_from

REFINE_SEED = 20180118   # the fixed noise of the refinement steps
CLIP = 5.0               # the largest gradient norm per row a refinement step follows


@dataclass
class SemiAmortizedOptions(Options):
    refine_steps: int = option(5, "Gradient steps on each datapoint's q, in training and evaluation.",
                               check=between(0, 1000))
    refine_lr: float = option(0.2, "Their step size (each row's gradient clipped to norm 5).", check=positive)


class SemiAmortizedGuide(nn.Module):
    """The encoder's diagonal Gaussians, refined by ``steps`` gradient steps of size ``lr``."""

    cli_help = "the encoder's Gaussian refined by --refine-steps SVI steps (Kim et al. 2018)"
    amortized = True
    per_datapoint = False
    mean_field = True
    jit_compatible = False   # the refinement differentiates inside the guide: not traceable
    Options = SemiAmortizedOptions

    def __init__(self, layers: Sequence[LatentLayer], data_dim: int, model: nn.Module, *,
                 steps: int = default_of(SemiAmortizedOptions, "refine_steps"),
                 lr: float = default_of(SemiAmortizedOptions, "refine_lr")):
        """``steps``, ``lr``: :class:`SemiAmortizedOptions`' ``refine_steps``, ``refine_lr``."""
        super().__init__()
        if any(layer.parent != "x" for layer in layers):
            raise ValueError("a semi-amortized guide refines latent sites inferred from x alone; "
                             "this model has a latent layer conditioned on another")
        self.encoder = AmortizedGuide(layers, data_dim, features=declared(model, "model", "features"))
        self.layers, self.steps, self.lr = list(layers), steps, lr
        object.__setattr__(self, "_model", bind(model))   # not a submodule: its parameters are the model's

    @classmethod
    def from_options(cls, options: SemiAmortizedOptions, model: nn.Module, num_data: int) -> "SemiAmortizedGuide":
        layers, data_dim, _ = built_from(model, cls)
        return cls(layers, data_dim, model, steps=options.refine_steps, lr=options.refine_lr)

    def encode(self, name: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q_0, the encoder's."""
        return self.encoder.encode(name, x)

    def refine(self, x: torch.Tensor, loc: dict[str, torch.Tensor], log_scale: dict[str, torch.Tensor]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """K gradient-ascent steps on each row's ELBO, log p(x, z) - log q(z) at z = μ + σ ε_k,
        from detached starting values. Runs the model under ``poutine.block`` and without a
        particle plate, so it neither shows in nor collides with the caller's traces."""
        loc = {name: value.detach() for name, value in loc.items()}
        log_scale = {name: value.detach() for name, value in log_scale.items()}
        generator = torch.Generator(device=x.device)
        names = list(loc)
        with torch.enable_grad(), poutine.block():
            for k in range(self.steps):
                generator.manual_seed(REFINE_SEED + k)
                params = [t.requires_grad_(True) for t in (*loc.values(), *log_scale.values())]
                z, log_q = {}, 0.0
                for name in names:
                    eps = torch.randn(loc[name].shape[-1], generator=generator, device=x.device, dtype=x.dtype)
                    scale = log_scale[name].exp()
                    z[name] = loc[name] + scale * eps
                    log_q = log_q + dist.Normal(loc[name], scale).log_prob(z[name]).sum(-1)
                trace = poutine.trace(poutine.condition(self._model, data=z)).get_trace(None, 1.0, x)
                log_p = sum(site["fn"].log_prob(site["value"]) for _, site in sample_sites(trace))
                grads = torch.autograd.grad((log_p - log_q).sum(), params)
                # each row's gradient clipped to norm CLIP (Kim et al. clip too): a 784-pixel
                # likelihood gives gradients in the hundreds early in training
                norm = torch.stack([g.square().sum(-1) for g in grads]).sum(0).sqrt()
                factor = (self.lr * (CLIP / norm.clamp(min=CLIP))).unsqueeze(-1)
                loc = {n: (loc[n] + factor * g).detach() for n, g in zip(names, grads[:len(names)])}
                log_scale = {n: (log_scale[n] + factor * g).detach() for n, g in zip(names, grads[len(names):])}
        return loc, log_scale

    def forward(self, x: torch.Tensor) -> None:
        loc0, log_scale0 = {}, {}
        for layer in self.layers:
            loc, scale = self.encode(layer.name, x)
            loc0[layer.name], log_scale0[layer.name] = loc, scale.log()
        loc_k, log_scale_k = self.refine(x, loc0, log_scale0)
        with data_plate(x):
            for name in loc0:
                # the value of q_K, the encoder's gradient as if q_K - q_0 were constant
                loc = loc0[name] + (loc_k[name] - loc0[name]).detach()
                scale = (log_scale0[name] + (log_scale_k[name] - log_scale0[name]).detach()).exp()
                pyro.sample(name, dist.Normal(loc, scale).to_event(1))

