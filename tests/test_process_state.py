"""Library calls leave the caller's process as they found it: RNGs, Pyro's param store, umask,
plotting backend, logger levels, signal handlers and the allocator's settings."""
from __future__ import annotations

import logging
import os
import signal

import matplotlib
import pyro
import torch

from pyrovae import heap
from pyrovae.config import FitConfig
from pyrovae.evaluation.importance import estimate_log_likelihood
from pyrovae.inference.compare import compare_inference
from pyrovae.objectives._pyro_compat import PYRO_CHECKED, jit_meanfield_retraces, jit_trace_doubles_gradients
from pyrovae.training import fit, load_run


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


def assert_same(before: dict, after: dict) -> None:
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch's global RNG moved"
    for key in ("umask", "backend", "sigint", "sigterm", "heap_tuned"):
        assert before[key] == after[key], key
    assert before["rcparams"] == after["rcparams"]
    changed = {name for name, level in after["loggers"].items() if before["loggers"].get(name, level) != level}
    assert not changed, f"logger levels changed: {changed}"
    assert before["params"].keys() == after["params"].keys()
    for name, value in before["params"].items():
        assert torch.equal(value, after["params"][name]), name


def test_fit_evaluate_and_compare_leave_the_process_as_they_found_it(tmp_path):
    torch.manual_seed(123)
    pyro.param("users_own_param", torch.tensor([1.0, 2.0]))   # a caller's Pyro state must survive
    before = snapshot()
    config = FitConfig(dataset="mnist-sample", epochs=1, latent_dim=3, hidden=(16,), batch_size=500,
                       eval_train_points=200, device="cpu", jit=True)
    fit(config, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run", device="cpu")
    x, _ = run.points("test", 20)
    estimate_log_likelihood(run.vae, x, k=30, compile=False)
    compare_inference(run, x, k=30, steps=20, refine_steps=5)
    assert_same(before, snapshot())
    assert torch.equal(pyro.param("users_own_param"), torch.tensor([1.0, 2.0]))


def test_pyro_jit_workarounds_are_still_needed():
    """pyrovae repairs two bugs of Pyro's JIT ELBOs (pyrovae.objectives._pyro_compat). When this fails,
    the installed pyro-ppl has fixed one: drop the workaround and this check."""
    assert jit_trace_doubles_gradients(), (f"pyro-ppl {pyro.__version__} no longer doubles JitTrace_ELBO "
                                           f"gradients (checked against {PYRO_CHECKED}): remove FixedJitTrace_ELBO")
    assert jit_meanfield_retraces(), (f"pyro-ppl {pyro.__version__} compiles JitTraceMeanField_ELBO once "
                                      f"(checked against {PYRO_CHECKED}): remove FixedJitTraceMeanField_ELBO")
