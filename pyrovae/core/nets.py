"""The deterministic networks inside models and guides: MLPs with ReLU."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


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
