"""Variational families q(z | x), registered by name: the CLI's ``--guide`` choices.

- ``amortized``: an encoder gives a diagonal Gaussian per latent layer (Kingma & Welling 2014).
- ``meanfield``: every training point owns a free diagonal Gaussian (Hoffman et al. 2013).
- ``flow``:      inverse autoregressive flows on the encoder's Gaussian (Kingma et al. 2016).
- ``semi-amortized``: the encoder's Gaussian refined by a few SVI steps (Kim et al. 2018).
- ``full-covariance``: an encoder gives a Gaussian with a Cholesky factor per point.

A guide class has ``Options`` (the dataclass of its options), ``from_options(options, model,
num_data)`` and declares what it can do as attributes and methods (:mod:`pyrovae.core.contract`:
``amortized``, ``per_datapoint``, ``mean_field``, ``local_family``, ``site_dist``, ...). Adding a
family is one file and a line here.
"""
from __future__ import annotations

from torch import nn

from .amortized import AmortizedGuide
from .flow import FlowGuide, PerPointFlowGuide
from .full_covariance import FullCovarianceGuide
from .meanfield import MeanFieldGuide
from .semi_amortized import SemiAmortizedGuide

GUIDES: dict[str, type[nn.Module]] = {"amortized": AmortizedGuide, "meanfield": MeanFieldGuide, "flow": FlowGuide,
                                      "semi-amortized": SemiAmortizedGuide, "full-covariance": FullCovarianceGuide}
DEFAULT_GUIDE = "amortized"   # what a run trains when it names no guide (FitConfig, --guide)

__all__ = ["GUIDES", "DEFAULT_GUIDE", "AmortizedGuide", "MeanFieldGuide", "FlowGuide", "PerPointFlowGuide",
           "SemiAmortizedGuide", "FullCovarianceGuide"]
