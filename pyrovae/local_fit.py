"""Test-time fit of a per-datapoint diagonal Gaussian q_i(z) = N(loc_i, diag(scale_i²)) with
the decoder frozen: for each x_i,

    q*_i = argmax_q  ELBO(x_i; q) = E_q[log p_θ(x_i | z)] - KL(q || N(0, I)),

the best member of the variational family, whatever the encoder would have said. The ELBO of
a batch is a sum of independent per-point ELBOs, so the gradient wrt (loc_i, log_scale_i)
involves x_i only, and one Adam (per-coordinate, hence per-point) on [N, D] tables optimizes
all points at once. The loss is Pyro's TraceMeanField_ELBO (analytic KL) of ``vae.model``
against a table guide, through :func:`pyrovae.objectives.make_objective`.

Started from the encoder's q_φ(z | x_i) and run for a few steps, this is the semi-amortized
refinement of Kim et al. (2018); run to convergence it gives the L[q*] of Cremer, Li &
Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders".

Stopping rule: every ``window`` steps compare the mean ELBO of the window with the previous
window's; once it improves by less than ``tol`` nats per point, divide the learning rate by 10
(at most ``lr_decays`` times, which removes most of Adam's noise from the final q), then stop.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Union

import pyro
import torch

from .evaluate import as_table, table_guide
from .guides import AmortizedGuide
from .model import VAE, frozen
from .objectives import elbo_terms, log_weights, make_objective

Init = Union[str, tuple[torch.Tensor, torch.Tensor]]   # "prior", "encoder", or a (loc, scale) table
EVAL_ELEMENTS = 20_000   # rows x samples through the decoder at once when estimating the ELBO


@dataclass
class LocalFit:
    """The fitted q_i = N(loc_i, scale_i²) for each row of x, and its ELBO (nats, per point)."""

    loc: torch.Tensor        # [N, D]
    scale: torch.Tensor      # [N, D]
    elbo: torch.Tensor       # [N]: analytic KL, reconstruction averaged over eval_samples draws
    steps: list[int] = field(default_factory=list)   # Adam steps taken, per batch of rows
    seconds: float = 0.0


class Plateau:
    """The stopping rule: window means of the ELBO; a plateau first decays lr, then stops."""

    def __init__(self, window: int, tol: float | None, lr_decays: int):
        self.window, self.tol, self.decays_left = window, tol, lr_decays
        self.values: list[float] = []
        self.previous = -math.inf

    def update(self, elbo: float) -> str:
        """``"go"``, ``"decay"`` (divide lr by 10) or ``"stop"``, after one step's mean ELBO."""
        self.values.append(elbo)
        if self.tol is None or len(self.values) < self.window:
            return "go"
        mean = sum(self.values) / len(self.values)
        self.values.clear()
        improved = mean - self.previous > self.tol
        self.previous = mean
        if improved:
            return "go"
        if self.decays_left > 0:
            self.decays_left -= 1
            self.previous = -math.inf   # the first window at the new lr is compared afresh
            return "decay"
        return "stop"


def initial_q(vae: VAE, x: torch.Tensor, init: Init) -> tuple[torch.Tensor, torch.Tensor]:
    """(loc, scale) [N, D] to start from: the prior N(0, I), the encoder's q_φ(z | x), or a table."""
    if isinstance(init, str):
        if init == "prior":
            zeros = x.new_zeros(len(x), vae.latent_dim)
            return zeros, torch.ones_like(zeros)
        if init == "encoder":
            if not isinstance(vae.guide_module, AmortizedGuide):
                raise ValueError("init='encoder' needs an amortized guide; this VAE has per-datapoint parameters")
            with torch.no_grad():
                return vae.guide_module(x)
        raise ValueError(f"unknown init {init!r}; use 'prior', 'encoder' or a (loc, scale) pair")
    return as_table(init, len(x), vae.latent_dim, x, "init")


def fit_local(vae: VAE, x: torch.Tensor, init: Init = "prior", max_steps: int = 3000, lr: float = 0.05,
              particles: int = 1, tol: float | None = 0.01, window: int = 100, lr_decays: int = 2,
              batch_size: int = 1000, eval_samples: int = 100, seed: int = 0,
              progress: Callable[[int, int], None] | None = None) -> LocalFit:
    """Maximize each row's ELBO over a diagonal Gaussian q_i with the decoder frozen.

    ``tol=None`` turns the stopping rule off (exactly ``max_steps`` steps, as for a fixed
    refinement budget). ``batch_size`` rows are optimized together. The returned ELBO uses the
    analytic KL and ``eval_samples`` reconstruction draws per point. ``progress(rows_done, N)``.
    """
    if max_steps < 0 or lr <= 0 or particles < 1 or window < 1 or batch_size < 1 or eval_samples < 1:
        raise ValueError("max_steps >= 0, and lr, particles, window, batch_size, eval_samples > 0")
    like = next(vae.parameters())
    x = x.to(device=like.device, dtype=like.dtype)
    loc0, scale0 = initial_q(vae, x, init)
    pyro.set_rng_seed(seed)
    objective = make_objective("meanfield", particles)
    started = time.perf_counter()
    locs, scales, steps = [], [], []
    with frozen(vae):
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            loc, scale, taken = _fit_batch(vae, x[rows], loc0[rows], scale0[rows], objective, max_steps,
                                           lr, Plateau(window, tol, lr_decays))
            locs.append(loc)
            scales.append(scale)
            steps.append(taken)
            if progress:
                progress(min(start + batch_size, len(x)), len(x))
    loc, scale = torch.cat(locs), torch.cat(scales)
    elbo = elbo_per_point(vae, x, loc, scale, eval_samples)
    return LocalFit(loc, scale, elbo, steps, time.perf_counter() - started)


def _fit_batch(vae: VAE, x: torch.Tensor, loc0: torch.Tensor, scale0: torch.Tensor, objective,
               max_steps: int, lr: float, plateau: Plateau) -> tuple[torch.Tensor, torch.Tensor, int]:
    loc = loc0.detach().clone().requires_grad_(True)
    log_scale = scale0.detach().log().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    index = torch.arange(len(x), device=x.device)
    step = 0
    for step in range(1, max_steps + 1):
        # sum over rows of -ELBO_i: row i's gradient depends on x_i alone
        loss = objective.differentiable_loss(vae.model, table_guide(loc, log_scale.exp()), x, index,
                                             num_data=len(x))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decision = plateau.update(-loss.item() / len(x))
        if decision == "stop":
            break
        if decision == "decay":
            for group in optimizer.param_groups:
                group["lr"] /= 10
    return loc.detach(), log_scale.detach().exp(), step


@torch.no_grad()
def elbo_per_point(vae: VAE, x: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                   num_samples: int = 100) -> torch.Tensor:
    """ELBO(x_i; N(loc_i, scale_i²)) = mean over ``num_samples`` z of log p(x_i | z) - KL (analytic),
    per row. The reconstruction draws are the only noise: its SE is std(log p(x|z)) / sqrt(num_samples)."""
    rows_at_once = max(1, EVAL_ELEMENTS // num_samples)
    out = []
    for start in range(0, len(x), rows_at_once):
        rows = slice(start, start + rows_at_once)
        xb, guide = x[rows], table_guide(loc[rows], scale[rows])
        index = torch.arange(len(xb), device=x.device)
        recon = log_weights(vae.model, guide, num_samples, xb, index, num_data=len(xb)).log_lik.mean(0)
        _, kl = elbo_terms(vae.model, guide, xb, index, num_data=len(xb))
        out.append(recon - kl)
    return torch.cat(out)
