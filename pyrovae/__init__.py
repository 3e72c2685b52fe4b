"""pyrovae: a variational autoencoder written as a Pyro program.

The public API, for use from Python::

    from pyrovae import FitConfig, fit, load_run, estimate_log_likelihood
    fit(FitConfig(dataset="mnist-sample", epochs=5), "runs/demo")
    run = load_run("runs/demo")
    print(estimate_log_likelihood(run.vae, run.data.test[:100], k=1000).summary())
"""
__version__ = "0.1.0"

from .compare import compare_inference
from .config import FitConfig, build_vae
from .evaluate import estimate_log_likelihood
from .guides import AmortizedGuide, MeanFieldGuide
from .local_fit import fit_local
from .model import VAE, Decoder
from .objectives import IWAE_ELBO, log_weights, make_objective
from .train import fit, load_run

__all__ = ["VAE", "Decoder", "AmortizedGuide", "MeanFieldGuide", "FitConfig", "build_vae", "fit", "load_run",
           "make_objective", "IWAE_ELBO", "log_weights", "estimate_log_likelihood", "fit_local",
           "compare_inference"]
