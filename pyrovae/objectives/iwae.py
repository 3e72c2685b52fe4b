"""The importance-weighted bound of Burda, Grosse & Salakhutdinov (2016), per datapoint:

    L_K(x_i) = E[ log (1/K) Σ_k p(x_i, z_k) / q(z_k | x_i) ],   z_k ~ q(z | x_i),

scaled by N/B to the whole data set: loss = -(N/B) Σ_i L_K(x_i). Pyro's RenyiELBO(alpha=0)
keeps one log weight per datapoint too, but puts the plate's subsample scale inside each
weight, log (1/K) Σ_k w_ik^(N/B), which is not L_K once B < N; this objective scales after the
logsumexp. β (the scale on the latent sites) weighs log p(z) - log q(z | x) inside each log
weight; at β = 1 this is exactly L_K, and with K = 1 it is Trace_ELBO.
"""
from __future__ import annotations

from typing import Callable

import torch
from pyro.infer import ELBO

from ..core.traces import iwae_bound, log_weights


class IWAE_ELBO(ELBO):
    """L_K as a Pyro objective (negated, as a loss), particles vectorized."""

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    def _get_trace(self, model, guide, args, kwargs):  # required by ELBO; unused here
        raise NotImplementedError

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        terms = log_weights(model, guide, self.num_particles, *args, **kwargs)
        log_w = terms.log_lik + terms.beta * (terms.log_prior - terms.log_q)
        return -terms.data_scale * iwae_bound(log_w).sum()

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()
