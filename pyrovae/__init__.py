"""pyrovae: variational autoencoders written as Pyro programs.

The public API, for use from Python::

    from pyrovae import FitConfig, fit, load_run, estimate_log_likelihood
    fit(FitConfig(dataset="mnist-sample", epochs=5), "runs/demo")
    run = load_run("runs/demo")
    print(estimate_log_likelihood(run.vae, run.data.test[0][:100], k=1000).summary())

Your own Pyro model and guide (see :mod:`pyrovae.programs`) go in as ``fit(config, run_dir,
vae=VAE(model, guide), data=Dataset(...))``.

The names below are resolved on first use (PEP 562), so that importing a part of pyrovae that
needs no torch (the command line's start, :mod:`pyrovae.cli.main`, which answers ``--help`` in
a fraction of a second) does not import all of it: ``from pyrovae import fit`` works as always.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .core.version import __version__

# public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(["FitConfig", "build_vae"], ".config"),
    **dict.fromkeys(["DATA_PLATE", "data_plate"], ".core.programs"),
    "VAE": ".core.vae",
    "Dataset": ".data",
    **dict.fromkeys(["BDMC", "AnnealedImportanceSampling", "bdmc", "estimate_log_likelihood_ais"], ".evaluation.ais"),
    **dict.fromkeys(["ImportanceSampling", "estimate_log_likelihood"], ".evaluation.importance"),
    **dict.fromkeys(["AISSettings", "BDMCSettings", "ISSettings"], ".evaluation.settings"),
    **dict.fromkeys(["GUIDES", "AmortizedGuide", "FlowGuide", "FullCovarianceGuide", "MeanFieldGuide",
                     "SemiAmortizedGuide"], ".guides"),
    **dict.fromkeys(["Comparison", "CompareSettings", "compare_inference"], ".inference.compare"),
    **dict.fromkeys(["LocalFitSettings", "fit_local"], ".inference.local_fit"),
    **dict.fromkeys(["MODELS", "TwoLayerModel", "VAEModel"], ".models"),
    **dict.fromkeys(["IWAE_ELBO", "OBJECTIVES", "log_weights", "make_objective"], ".objectives"),
    "Callback": ".training",
    **dict.fromkeys(["fit", "load_run"], ".workflows"),
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pyrovae' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    globals()[name] = value   # later look-ups find it directly
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:   # the same names, for type checkers and editors
    from .config import FitConfig, build_vae
    from .core.programs import DATA_PLATE, data_plate
    from .core.vae import VAE
    from .data import Dataset
    from .evaluation.ais import BDMC, AnnealedImportanceSampling, bdmc, estimate_log_likelihood_ais
    from .evaluation.importance import ImportanceSampling, estimate_log_likelihood
    from .evaluation.settings import AISSettings, BDMCSettings, ISSettings
    from .guides import GUIDES, AmortizedGuide, FlowGuide, FullCovarianceGuide, MeanFieldGuide, SemiAmortizedGuide
    from .inference.compare import Comparison, CompareSettings, compare_inference
    from .inference.local_fit import LocalFitSettings, fit_local
    from .models import MODELS, TwoLayerModel, VAEModel
    from .objectives import IWAE_ELBO, OBJECTIVES, log_weights, make_objective
    from .training import Callback
    from .workflows import fit, load_run
