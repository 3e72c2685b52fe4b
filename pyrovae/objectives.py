"""Training objectives, all computed from Pyro traces of ``vae.model`` and ``vae.guide``.

- ``trace``:     Trace_ELBO, the ELBO E_q[log p(x, z) - log q(z | x)] by Monte Carlo.
- ``meanfield``: TraceMeanField_ELBO, the same with the KL term in closed form.
- ``iwae``:      the importance-weighted bound of Burda, Grosse & Salakhutdinov (2016),

      L_K(x_i) = E[ log (1/K) Σ_k p(x_i, z_k) / q(z_k | x_i) ],   z_k ~ q(z | x_i),

  per datapoint, scaled by N/B to the whole data set: -(N/B) Σ_i L_K(x_i). Pyro's
  RenyiELBO(alpha=0) keeps one log weight per datapoint too, but puts the plate's subsample
  scale inside each weight, log (1/K) Σ_k w_ik^(N/B), which is not L_K once B < N;
  :class:`IWAE_ELBO` scales after the logsumexp.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from pyro.infer import ELBO, JitTrace_ELBO, JitTraceMeanField_ELBO, Trace_ELBO, TraceMeanField_ELBO

OBJECTIVES = ("trace", "meanfield", "iwae")
PARTICLE_DIM = -2  # the data plate is dim -1; particles stack to its left


class LogWeights(NamedTuple):
    """Per-particle, per-datapoint terms, each of shape [K, batch]."""

    log_lik: torch.Tensor     # log p(x_i | z_k)
    log_prior: torch.Tensor   # log p(z_k)
    log_q: torch.Tensor       # log q(z_k | x_i)
    data_scale: float         # num_data / batch, to scale batch sums to the full data set
    beta: float | torch.Tensor  # the KL coefficient the model and guide put on the latent site

    @property
    def log_w(self) -> torch.Tensor:
        """log w_ik = log p(x_i, z_k) - log q(z_k | x_i)."""
        return self.log_lik + self.log_prior - self.log_q


def _sample_sites(trace: poutine.Trace):
    """The sample sites of a trace, without the plates' own subsample sites."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def _traces(model: Callable, guide: Callable, num_particles: int, args, kwargs):
    """Guide trace with ``num_particles`` z per datapoint (vectorized), and the model replayed on it."""
    particles = pyro.plate("particles", num_particles, dim=PARTICLE_DIM)
    guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def log_weights(model: Callable, guide: Callable, num_particles: int, *args, **kwargs) -> LogWeights:
    """Draw ``num_particles`` z per datapoint from the guide (vectorized in a plate), replay the
    model on them, and return per-datapoint log densities, unscaled by plates or ``beta``."""
    model_trace, guide_trace = _traces(model, guide, num_particles, args, kwargs)
    log_lik, log_prior, log_q, data_scale, beta = 0.0, 0.0, 0.0, 1.0, 1.0
    for _, site in _sample_sites(model_trace):
        log_p = site["fn"].log_prob(site["value"])
        for frame in site["cond_indep_stack"]:
            if frame.name == "data":
                data_scale = (frame.full_size or frame.size) / frame.size
        if site["is_observed"]:
            log_lik = log_lik + log_p
        else:
            log_prior = log_prior + log_p
            # the site's scale is data_scale (the plate) times beta (poutine.scale)
            beta = site["scale"] / data_scale
    for _, site in _sample_sites(guide_trace):
        if not site["is_observed"]:
            log_q = log_q + site["fn"].log_prob(site["value"])
    return LogWeights(log_lik, log_prior, log_q, data_scale, beta)


def iwae_bound(log_w: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """log (1/K) Σ_k w_k along ``dim``: the K-sample importance-weighted bound per datapoint."""
    return torch.logsumexp(log_w, dim=dim) - math.log(log_w.shape[dim])


class IWAE_ELBO(ELBO):
    """The per-datapoint importance-weighted bound L_K as a Pyro objective (negated, as a loss).

    ``beta`` (the scale model and guide put on the latent site) weighs log p(z) - log q(z | x) inside each log
    weight; at beta = 1 this is exactly L_K. With K = 1 it equals Trace_ELBO.
    """

    def __init__(self, num_particles: int = 5):
        super().__init__(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)

    def _get_trace(self, model, guide, args, kwargs):  # required by ELBO; unused here
        raise NotImplementedError

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        terms = log_weights(model, guide, self.num_particles, *args, **kwargs)
        log_w = terms.log_lik + terms.beta * (terms.log_prior - terms.log_q)
        return -terms.data_scale * iwae_bound(log_w).sum()

    def loss(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return loss.item()


def make_objective(name: str, num_particles: int = 1, jit: bool = False) -> ELBO | ShapeKeyedJit:
    """The Pyro objective for ``--elbo name``; particles are always vectorized. Training uses
    its ``differentiable_loss`` with a torch optimizer."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {OBJECTIVES}")
    if name == "iwae":
        if jit:
            raise ValueError("--jit is not available for --elbo iwae (Pyro has no JIT IWAE); drop --jit")
        return IWAE_ELBO(num_particles)
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if jit:
        return ShapeKeyedJit(_JitTrace if name == "trace" else _JitTraceMeanField, options)
    return (Trace_ELBO if name == "trace" else TraceMeanField_ELBO)(**options)


class _JitTrace(JitTrace_ELBO):
    """JitTrace_ELBO whose differentiable loss has the right gradient.

    pyro-ppl 1.9's version returns ``loss + (surrogate - surrogate.detach())`` where the
    compiled ``loss`` still carries a gradient, so every gradient comes out doubled.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        loss, surrogate_loss = self.loss_and_surrogate_loss(model, guide, *args, **kwargs)
        return loss.detach() + (surrogate_loss - surrogate_loss.detach())


class _JitTraceMeanField(JitTraceMeanField_ELBO):
    """JitTraceMeanField_ELBO that compiles once.

    pyro-ppl 1.9's version looks for its cache under ``_loss_and_surrogate_loss`` but stores it
    as ``_differentiable_loss``, so it builds and traces a new function on every call: that is
    why it ran several times slower than no JIT at all.
    """

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor:
        if getattr(self, "_differentiable_loss", None) is None:
            return super().differentiable_loss(model, guide, *args, **kwargs)
        kwargs["_pyro_model_id"] = id(model)
        kwargs["_pyro_guide_id"] = id(guide)
        return self._differentiable_loss(*args, **kwargs)


class ShapeKeyedJit:
    """Pyro's JIT ELBOs (trace, meanfield), compiled once per batch shape.

    ``pyro.ops.jit`` caches a compiled loss by the number of args and by the kwargs, which
    include ``id(model)``; shapes are not part of the key, and a trace bakes in Python numbers
    such as the plate's scale N/B. One compiled ELBO per shape keeps each trace exact. Pass
    the same ``model`` and ``guide`` objects on every call: a bound method is a new object on
    each attribute access, and a new id means a new compilation.
    """

    def __init__(self, cls: type, options: dict):
        self.cls, self.options = cls, {**options, "ignore_jit_warnings": True}
        self.compiled: dict[tuple, ELBO] = {}

    def differentiable_loss(self, model: Callable, guide: Callable, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        key = tuple(x.shape)
        if key not in self.compiled:
            # Compiling runs the program more than once and so draws extra random numbers; undo
            # them, so a run draws the same numbers with or without the JIT, and after a resume.
            self.compiled[key] = self.cls(**self.options)
            devices = [x.device] if x.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch 2.x deprecates torch.jit.trace, which Pyro uses
                self.compiled[key].differentiable_loss(model, guide, x, *args, **kwargs)
        return self.compiled[key].differentiable_loss(model, guide, x, *args, **kwargs)


def elbo_terms(model: Callable, guide: Callable, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-datapoint (reconstruction, KL) at beta = 1 with one z ~ q per point: reconstruction
    E_q[log p(x | z)] by one sample, KL(q || p) in closed form. ELBO = reconstruction - KL."""
    model_trace, guide_trace = _traces(model, guide, 1, args, kwargs)
    recon, kl = 0.0, 0.0
    for name, site in _sample_sites(model_trace):
        if site["is_observed"]:
            recon = recon + site["fn"].log_prob(site["value"])[0]
        else:
            q = guide_trace.nodes[name]["fn"]
            kl = kl + torch.distributions.kl_divergence(q, site["fn"])[0]
    return recon, kl
