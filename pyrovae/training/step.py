"""One SVI step: the objective's loss from Pyro traces of the bound model and guide, then an
optimizer step on their parameters.

:class:`LossModule` plays the part of Pyro's ``ELBOModule``: an ``nn.Module`` whose forward is
the loss and whose parameters are the model's and guide's, so DistributedDataParallel can wrap
it and average gradients across processes.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..vae import VAE


class LossModule(nn.Module):
    """loss(index, beta, *batch) = objective.differentiable_loss(model, guide, index, beta, *batch,
    num_data=N): the negative objective of the whole data set, estimated from one batch."""

    def __init__(self, vae: VAE, objective, num_data: int, register: bool = False):
        super().__init__()
        self.vae, self.objective, self.num_data = vae, objective, num_data
        self.model_fn, self.guide_fn = vae.bound(register)

    def forward(self, index: torch.Tensor, beta: float | torch.Tensor, *batch: torch.Tensor) -> torch.Tensor:
        return self.objective.differentiable_loss(self.model_fn, self.guide_fn, index, beta, *batch,
                                                  num_data=self.num_data)


def svi_step(loss: nn.Module, optimizer: torch.optim.Optimizer, index: torch.Tensor,
             beta: float | torch.Tensor, *batch: torch.Tensor) -> float:
    """One step; returns the loss. Raises FloatingPointError, before touching any parameter,
    when the loss is not finite."""
    value_tensor = loss(index, beta, *batch)
    value = value_tensor.item()
    if not math.isfinite(value):
        raise FloatingPointError(str(value))
    optimizer.zero_grad(set_to_none=True)
    value_tensor.backward()
    optimizer.step()
    return value
