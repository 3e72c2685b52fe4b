"""Workarounds for two bugs of Pyro's JIT ELBOs, in one place.

Checked against pyro-ppl ``PYRO_CHECKED``; ``tests/core/test_process_state.py`` probes the installed
Pyro with :func:`jit_trace_doubles_gradients` and :func:`jit_meanfield_retraces` and fails once
upstream behaves, so the workaround can be removed.

1. ``JitTrace_ELBO.differentiable_loss`` returns ``loss + (surrogate - surrogate.detach())``
   where the compiled ``loss`` still carries a gradient: every gradient comes out doubled.
2. ``JitTraceMeanField_ELBO.differentiable_loss`` looks for its compiled function under
   ``_loss_and_surrogate_loss`` but stores it as ``_differentiable_loss``, so it builds and
   traces a new function on every call, several times slower than no JIT at all.

Pyro's JIT caches a compiled loss by the kwargs, which include ``id(model)``, not by the shapes
of the tensors, and a trace bakes in Python numbers such as the N/B scale of a batch: so
:class:`ShapeKeyedJit` keeps one compiled ELBO per batch shape (in training, only the batch size's:
an epoch's last, smaller batch runs eagerly). ``torch.jit.trace``, which Pyro's JIT uses, is
deprecated in torch 2.x; its warning is silenced here.
"""
from __future__ import annotations

import warnings
from typing import Callable

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO

from ..core.noise import forked_rng

PYRO_CHECKED = "1.9.2"


class FixedJitTrace_ELBO(JitTrace_ELBO):
    """JitTrace_ELBO whose differentiable loss has the right gradient (bug 1)."""

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class FixedJitTraceMeanField_ELBO(JitTraceMeanField_ELBO):
    """JitTraceMeanField_ELBO that compiles once (bug 2)."""

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        if getattr(self, "_differentiable_loss", None) is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)


class ShapeKeyedJit:
    """A JIT ELBO compiled once per shape of the first tensor argument (the batch's rows).

    With ``rows`` (a training run's batch size) and an ``eager`` objective, only batches of that
    many rows are compiled and any other runs eagerly: an epoch's last, partial batch comes once
    per epoch, and compiling its shape (a trace, then the executor's profiling runs: some 15
    steps' time) costs more than the few epochs of a run save by it. Which batches run eagerly
    depends on their size alone, so a resumed run computes as an uninterrupted one. Pass the same
    ``model`` and ``guide`` objects on every call: a new id means a new compilation.
    """

    def __init__(self, cls: type, options: dict, eager: ELBO | None = None, rows: int | None = None):
        self.cls, self.options = cls, {**options, "ignore_jit_warnings": True}
        self.eager, self.rows = eager, rows
        self.compiled: dict[tuple, ELBO] = {}
        self.num_particles = options.get("num_particles", 1)

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        like = next(a for a in args if isinstance(a, torch.Tensor) and a.dim() > 0)
        if self.eager is not None and self.rows is not None and like.shape[0] != self.rows:
            return self.eager.differentiable_loss(model, guide, *args, **kwargs)
        key = tuple(tuple(a.shape) for a in args if isinstance(a, torch.Tensor))
        if key not in self.compiled:
            # Compiling runs the program more than once and so draws extra random numbers; undo
            # them, so a run draws the same numbers with or without the JIT, and after a resume.
            self.compiled[key] = self.cls(**self.options)
            with forked_rng(like.device), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)   # torch.jit.trace is deprecated
                self.compiled[key].differentiable_loss(model, guide, *args, **kwargs)
        return self.compiled[key].differentiable_loss(model, guide, *args, **kwargs)


# ---------------------------------------------------------------------------- probes of upstream

def _tiny_problem():
    def model(x):
        loc = pyro.param("probe_loc", torch.tensor(0.3))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        pass

    return model, guide, torch.tensor([1.0, 2.0])


def jit_trace_doubles_gradients() -> bool:
    """Whether the installed Pyro's JitTrace_ELBO still doubles gradients (bug 1)."""
    with pyro.get_param_store().scope():
        model, guide, x = _tiny_problem()
        grads = []
        for elbo in (JitTrace_ELBO(ignore_jit_warnings=True), Trace_ELBO()):
            pyro.get_param_store().clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                elbo.differentiable_loss(model, guide, x)   # compile
                loss = elbo.differentiable_loss(model, guide, x)
            (grad,) = torch.autograd.grad(loss, [pyro.param("probe_loc").unconstrained()])
            grads.append(float(grad))
    return abs(grads[0] - 2 * grads[1]) < 1e-6 * max(1.0, abs(grads[1]))


def jit_meanfield_retraces() -> bool:
    """Whether the installed Pyro's JitTraceMeanField_ELBO still compiles on every call (bug 2)."""
    with pyro.get_param_store().scope():
        model, guide, x = _tiny_problem()
        elbo = JitTraceMeanField_ELBO(ignore_jit_warnings=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            elbo.differentiable_loss(model, guide, x)
            first = elbo._differentiable_loss
            elbo.differentiable_loss(model, guide, x)
        return elbo._differentiable_loss is not first
