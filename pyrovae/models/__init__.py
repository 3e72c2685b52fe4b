"""Generative models p_θ(x, z), registered by name: the CLI's ``--model`` choices.

A model class has ``Options`` (the dataclass of its options, :mod:`pyrovae.core.options`),
``from_options(options, data_dim, image_shape)``, ``latent_layers()`` (its latent sites in the order a guide
samples them, for the built-in guides) and ``forward(x)``, the Pyro program; the other hooks it
may declare are in :mod:`pyrovae.core.contract`. Adding a model is one file and a line here.
"""
from __future__ import annotations

from torch import nn

from ..core.nets import ReLU, mlp
from .conv import ConvModel
from .likelihoods import LIKELIHOODS, MIN_SIGMA, parse_sigma
from .two_layer import TwoLayerModel
from .vae import VAEModel
from .vampprior import VampPriorModel

MODELS: dict[str, type[nn.Module]] = {"vae": VAEModel, "two-layer": TwoLayerModel, "vampprior": VampPriorModel,
                                      "conv": ConvModel}
DEFAULT_MODEL = "vae"   # what a run trains when it names no model (FitConfig, --model)

__all__ = ["MODELS", "DEFAULT_MODEL", "LIKELIHOODS", "MIN_SIGMA", "parse_sigma", "ReLU", "mlp", "VAEModel",
           "TwoLayerModel", "ConvModel"]
