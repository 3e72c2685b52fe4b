"""The deterministic networks inside models and guides: MLPs, their activation and their
initialisation.

``activation``: ``relu`` (pyrovae's default), ``tanh`` (Burda, Grosse & Salakhutdinov 2016, the
IWAE paper's networks) or ``elu`` (Clevert et al. 2016; Cremer, Li & Duvenaud 2018's).

``init``: ``torch`` leaves PyTorch's default (weights and biases uniform in ±1/√fan_in, i.e.
Kaiming-uniform with a = √5); ``glorot`` draws every weight of an affine layer uniformly in
±√(6 / (fan_in + fan_out)) and sets its biases to zero (Glorot & Bengio 2010, the scheme of
Burda et al.'s nnet.Linear.random). Both draw from torch's generator, so a seeded run is the
same run.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import UsageError

ACTIVATIONS = ("relu", "tanh", "elu")
INITS = ("torch", "glorot")


class ReLU(nn.ReLU):
    """max(x, 0), in place when no gradient is recorded (evaluation: one [batch, hidden] buffer
    less per layer and pass), out of place otherwise, as autograd and Pyro's JIT traces need."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or torch.jit.is_tracing():
            return torch.relu(x)
        return x.relu_()


def activation_layer(name: str) -> nn.Module:
    """The module of an activation in ``ACTIVATIONS``."""
    layers = {"relu": ReLU, "tanh": nn.Tanh, "elu": nn.ELU}
    if name not in layers:
        raise UsageError(f"unknown activation {name!r}; use {', '.join(ACTIVATIONS)}")
    return layers[name]()


def initialize(module: nn.Module, init: str = "torch") -> nn.Module:
    """``module`` with every affine and convolutional layer in it initialised by ``init`` (in
    ``INITS``; ``torch`` leaves them as constructed); returns ``module``."""
    if init not in INITS:
        raise UsageError(f"unknown init {init!r}; use {', '.join(INITS)}")
    if init == "glorot":
        with torch.no_grad():
            for layer in module.modules():
                if isinstance(layer, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.xavier_uniform_(layer.weight)
                    if layer.bias is not None:
                        layer.bias.zero_()
    return module


def mlp(sizes: Sequence[int], activation: str = "relu", init: str = "torch") -> nn.Sequential:
    """Affine layers between consecutive ``sizes`` with ``activation`` in between (none after the
    last), initialised by ``init``."""
    layers: list[nn.Module] = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i > 0:
            layers.append(activation_layer(activation))
        layers.append(nn.Linear(fan_in, fan_out))
    return initialize(nn.Sequential(*layers), init)
