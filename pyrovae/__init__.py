"""pyrovae: variational autoencoders written as Pyro programs.

The public API, for use from Python::

    from pyrovae import FitConfig, fit, load_run, estimate_log_likelihood
    fit(FitConfig(dataset="mnist-sample", epochs=5), "runs/demo")
    run = load_run("runs/demo")
    print(estimate_log_likelihood(run.vae, run.data.test[0][:100], k=1000).summary())

Your own Pyro model and guide (see :mod:`pyrovae.programs`) go in as ``fit(config, run_dir,
vae=VAE(model, guide), data=Dataset(...))``.
"""
from .config import FitConfig, build_vae
from .core.programs import DATA_PLATE, data_plate
from .core.vae import VAE
from .core.version import __version__
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

__all__ = ["__version__", "VAE", "VAEModel", "TwoLayerModel", "AmortizedGuide", "MeanFieldGuide", "FlowGuide", "SemiAmortizedGuide",
           "FullCovarianceGuide",
           "MODELS", "GUIDES", "OBJECTIVES", "FitConfig", "Dataset", "build_vae", "fit", "load_run", "Callback",
           "make_objective", "IWAE_ELBO", "log_weights", "estimate_log_likelihood", "estimate_log_likelihood_ais",
           "bdmc", "fit_local", "compare_inference", "DATA_PLATE", "data_plate",
           "ImportanceSampling", "AnnealedImportanceSampling", "BDMC", "Comparison", "ISSettings", "AISSettings",
           "BDMCSettings", "CompareSettings", "LocalFitSettings"]
