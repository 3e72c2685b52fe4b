"""One SVI step: the objective's loss from Pyro traces of the bound model and guide, then an
optimizer step on their parameters.

:class:`LossModule` plays the part of Pyro's ``ELBOModule``: an ``nn.Module`` whose forward is
the loss and whose parameters are the model's and guide's, so DistributedDataParallel can wrap
it and average gradients across processes. With ``noise_seed`` its guide draws the
reparameterization noise of position i of the global batch at (epoch, step) from a generator
seeded by them (per tile of positions), so the draws do not depend on how processes share the batch.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from ..core.contract import declared
from ..core.noise import noise, site_stream, tile_seed, with_noise
from ..core.vae import VAE

TRAINING_STREAM = 4
NOISE_TILE_ROWS = 32   # positions per seeded generator when the noise is seeded per row


class LossModule(nn.Module):
    """loss(index, beta, *batch) = objective.differentiable_loss(model, guide, index, beta, *batch,
    num_data=N): the negative objective of the whole data set, estimated from one batch."""

    def __init__(self, vae: VAE, objective, num_data: int, register: bool = False, noise_seed: int | None = None):
        super().__init__()
        self.vae, self.objective, self.num_data, self.noise_seed = vae, objective, num_data, noise_seed
        self.model_fn, self.guide_fn = vae.bound(register)
        self.noise_key: tuple = (0, 0, range(0))   # (epoch, step, positions[, local step]), set per step

    def forward(self, index: torch.Tensor, beta: float | torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
        guide = self.guide_fn
        if self.noise_seed is not None:
            epoch, step, positions, *local_step = self.noise_key
            particles = range(declared(self.objective, "objective", "num_particles"))
            stream = tile_seed(TRAINING_STREAM, epoch, step, *local_step)
            guide = with_noise(guide, lambda name, shape: noise(
                self.noise_seed, stream ^ site_stream(name), particles, positions, tuple(shape), batch[0],
                tile=(len(particles), NOISE_TILE_ROWS)))
        return self.objective.differentiable_loss(self.model_fn, guide, index, beta, *batch, num_data=self.num_data)


def svi_step(loss: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
             beta: float | torch.Tensor, *batch: torch.Tensor, agree: Callable[[float], None] | None = None,
             inputs: list[torch.Tensor] | None = None) -> float:
    """One step; returns the loss. Raises FloatingPointError, before touching any parameter,
    when the loss is not finite. ``agree(value)``, between the loss and its gradient, lets the
    processes of a distributed run stop together (it may raise). ``inputs``: differentiate with
    respect to these tensors only (the others keep no gradient: the optimizer leaves them alone)."""
    value_tensor = loss(index, beta, *batch)
    value = value_tensor.item()
    if agree is not None:
        agree(value)
    elif not math.isfinite(value):
        raise FloatingPointError(str(value))
    optimizer.zero_grad(set_to_none=True)
    value_tensor.backward(inputs=inputs)
    optimizer.step()
    return value
