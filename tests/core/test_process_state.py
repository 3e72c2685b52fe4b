"""Library calls leave the caller's process as they found it: RNGs, Pyro's param store, umask,
plotting backend, logger levels, signal handlers and the allocator's settings."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import matplotlib
import numpy as np
import pyro
import pytest
import torch

from pyrovae.config import FitConfig
from pyrovae.core import heap
from pyrovae.evaluation.ais import bdmc, estimate_log_likelihood_ais
from pyrovae.evaluation.importance import estimate_log_likelihood
from pyrovae.guides.rows import take_rows
from pyrovae.inference.compare import compare_inference
from pyrovae.inference.local_fit import fit_local
from pyrovae.objectives._pyro_compat import PYRO_CHECKED, jit_meanfield_retraces, jit_trace_doubles_gradients
from pyrovae.pictures.plots import write_run_images
from pyrovae.workflows import fit, load_run


def snapshot() -> dict:
    umask = os.umask(0o022)
    os.umask(umask)
    loggers = {name: logger.level for name, logger in logging.Logger.manager.loggerDict.items()
               if isinstance(logger, logging.Logger)}
    return {"torch_rng": torch.get_rng_state(), "umask": umask, "backend": matplotlib.get_backend(),
            "rcparams": dict(matplotlib.rcParams), "loggers": loggers,
            "params": {k: v.detach().clone() for k, v in pyro.get_param_store().items()},
            "sigint": signal.getsignal(signal.SIGINT), "sigterm": signal.getsignal(signal.SIGTERM),
            "heap_tuned": heap.tuned()}


def assert_same(before: dict, after: dict, call: str = "") -> None:
    assert torch.equal(before["torch_rng"], after["torch_rng"]), f"{call}: torch's global RNG moved"
    for key in ("umask", "backend", "sigint", "sigterm", "heap_tuned"):
        assert before[key] == after[key], f"{call}: {key}"
    assert before["rcparams"] == after["rcparams"], call
    changed = {name for name, level in after["loggers"].items() if before["loggers"].get(name, level) != level}
    assert not changed, f"{call}: logger levels changed: {changed}"
    assert before["params"].keys() == after["params"].keys(), call
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), f"{call}: {name}"


FAMILIES = [("vae", "amortized", {}), ("vae", "meanfield", {"elbo": "meanfield"}), ("vae", "flow", {}),
            ("vae", "semi-amortized", {}), ("vae", "full-covariance", {}),
            ("two-layer", "amortized", {"z1_dim": 3, "z1_hidden": (8,)}),
            ("two-layer", "flow", {"z1_dim": 3, "z1_hidden": (8,)}),
            ("conv", "amortized", {"channels": (2,)}), ("vampprior", "amortized", {"pseudo_inputs": 5})]


@pytest.mark.parametrize("model, guide, extra", FAMILIES, ids=[f"{m}-{g}" for m, g, _ in FAMILIES])
def test_every_estimator_leaves_the_process_as_it_found_it(tmp_path, model, guide, extra):
    """fit, load_run, IS, AIS, BDMC, compare, fit_local and the pictures, for every family: each
    call leaves torch's RNG (a flow's guide means, and the observed site's lookup of BDMC and
    the pictures, once drew from it), Pyro's param store and the rest as they were."""
    images = np.random.default_rng(0).random((240, 6, 6), dtype=np.float32)   # tiny images: pictures too
    np.savez(tmp_path / "images.npz", train=images[:200], test=images[200:])
    torch.manual_seed(123)
    pyro.param("users_own_param", torch.tensor([1.0, 2.0]))   # a caller's Pyro state must survive
    config = FitConfig(dataset=str(tmp_path / "images.npz"), model=model, guide=guide, epochs=1, latent_dim=2,
                       hidden=(8,), batch_size=50, eval_train_points=50, device="cpu", **extra)
    loaded = {}

    def load():
        loaded["run"] = load_run(tmp_path / "run", device="cpu")

    steps = [("fit", lambda: fit(config, tmp_path / "run", progress=False)), ("load_run", load)]
    for name, call in steps:
        before = snapshot()
        call()
        assert_same(before, snapshot(), name)
    run = loaded["run"]
    x, index = run.points("train" if guide == "meanfield" else "test", 6)
    proposal = take_rows(run.vae.guide, index) if index is not None else "guide"
    steps = [
        ("IS", lambda: estimate_log_likelihood(run.vae, x, k=30, proposal=proposal, compile=False)),
        ("AIS", lambda: estimate_log_likelihood_ais(run.vae, x, steps=3, chains=2, leapfrog=2, proposal=proposal,
                                                    is_k=10, compile=False)),
        ("BDMC", lambda: bdmc(run.vae, x, steps=3, chains=2, leapfrog=2, is_k=10,
                              proposal="guide" if run.vae.can("amortized") else "prior")),
        ("compare", lambda: compare_inference(run, x, index=index, k=20, steps=5, refine_steps=2, eval_samples=3)),
        ("fit_local", lambda: fit_local(run.vae, x, init="prior", max_steps=5)),
        ("pictures", lambda: write_run_images(run.vae, run.data, tmp_path / "run")),
    ]
    for name, call in steps:
        before = snapshot()
        call()
        assert_same(before, snapshot(), name)
    assert torch.equal(pyro.param("users_own_param"), torch.tensor([1.0, 2.0]))


BEFORE_AND_AFTER_IMPORT = r"""
import importlib, json, logging, os, pkgutil, signal, sys, warnings
import torch, pyro, pyro.distributions
import torch.distributions.kl as kl

def state():
    umask = os.umask(0o022); os.umask(umask)
    # KL pairs a user can hit: those of classes that are not pyrovae's own
    pairs = sorted(f"{p.__module__}.{p.__qualname__} | {q.__module__}.{q.__qualname__}" for p, q in kl._KL_REGISTRY
                   if not (p.__module__.startswith("pyrovae") or q.__module__.startswith("pyrovae")))
    return {"kl_pairs": pairs, "torch_rng": torch.get_rng_state().tolist(), "dtype": str(torch.get_default_dtype()),
            "threads": torch.get_num_threads(), "grad": torch.is_grad_enabled(), "anomaly": torch.is_anomaly_enabled(),
            "deterministic": torch.are_deterministic_algorithms_enabled(),
            "matmul_precision": torch.get_float32_matmul_precision(),
            "pyro_validation": pyro.distributions.is_validation_enabled(),
            "torch_validation": torch.distributions.Distribution._validate_args,
            "params": sorted(pyro.get_param_store().keys()), "sigint": repr(signal.getsignal(signal.SIGINT)),
            "sigterm": repr(signal.getsignal(signal.SIGTERM)), "umask": umask, "env": dict(os.environ),
            "warnings": [repr(f) for f in warnings.filters], "recursion": sys.getrecursionlimit(),
            "loggers": {n: l.level for n, l in logging.Logger.manager.loggerDict.items() if isinstance(l, logging.Logger)}}

before = state()
import pyrovae
for module in pkgutil.walk_packages(pyrovae.__path__, "pyrovae."):
    importlib.import_module(module.name)
after = state()
after["loggers"] = {n: level for n, level in after["loggers"].items() if n in before["loggers"]}   # new ones are new
print(json.dumps({key: [before[key], after[key]] for key in before if before[key] != after[key]}))
"""


def test_importing_pyrovae_changes_nothing_a_user_can_observe():
    """A fresh interpreter, its state taken before pyrovae is imported: importing every module of
    pyrovae leaves torch's KL dispatch for torch's and Pyro's classes (pyrovae's closed-form KL is
    registered for its own CholeskyNormal), the RNG, defaults, signal handlers and the rest alone."""
    proc = subprocess.run([sys.executable, "-c", BEFORE_AND_AFTER_IMPORT], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {}
    from pyrovae.guides.full_covariance import CholeskyNormal
    assert (CholeskyNormal, torch.distributions.Independent) in torch.distributions.kl._KL_REGISTRY


def test_pyro_jit_workarounds_are_still_needed():
    """pyrovae repairs two bugs of Pyro's JIT ELBOs (pyrovae.objectives._pyro_compat). When this fails,
    the installed pyro-ppl has fixed one: drop the workaround and this check."""
    assert jit_trace_doubles_gradients(), (f"pyro-ppl {pyro.__version__} no longer doubles JitTrace_ELBO "
                                           f"gradients (checked against {PYRO_CHECKED}): remove FixedJitTrace_ELBO")
    assert jit_meanfield_retraces(), (f"pyro-ppl {pyro.__version__} compiles JitTraceMeanField_ELBO once "
                                      f"(checked against {PYRO_CHECKED}): remove FixedJitTraceMeanField_ELBO")
