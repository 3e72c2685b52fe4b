"""Per-datapoint quantities from Pyro traces: the one place where log weights and ELBOs are read.

With K particles vectorized in a plate at dim -2 (the data plate is dim -1), the guide is run,
the model is replayed on the guide's draws, and for every datapoint i and particle k:

    log w_ik = log p(x_i | z_ik) + log p(z_ik) - log q(z_ik | x_i),

each term summed over all sites of its kind (observed; latent in the model; latent in the
guide), unscaled by plates or β. The per-point ELBO is

    ELBO_i = E_q[log p(x_i | z)] - KL(q(z | x_i) || p(z)),

with the KL of each latent site in closed form where torch registers one and the guide is
mean-field (no latent site depends on another in the guide: then site-wise KLs are exact,
see Pyro's TraceMeanField_ELBO), and by Monte Carlo, log q - log p at the draws, otherwise.
Training metrics, ``evaluate``, the local fits and ``compare`` all use these functions.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .contract import can
from .errors import UsageError
from .programs import DATA_PLATE, PARTICLE_DIM, PARTICLE_PLATE, program_of


def sample_sites(trace: poutine.Trace) -> Iterator[tuple[str, dict]]:
    """The sample sites of a trace, without the plates' own subsample sites."""
    for name, site in trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            yield name, site


def unconditioned_observation(trace: poutine.Trace) -> tuple[str, dict]:
    """(name, site) of the site the model observes, in a trace of ``poutine.uncondition(model)``,
    which samples that site instead and marks it ``was_observed`` (pyro-ppl 1.9.2): no second
    run of the model, whose latent draws would come from the caller's global generator."""
    return next((name, site) for name, site in sample_sites(trace) if site["infer"].get("was_observed"))


def particle_traces(model: Callable, guide: Callable, num_particles: int, *args, **kwargs
                    ) -> tuple[poutine.Trace, poutine.Trace]:
    """The guide's trace with ``num_particles`` draws per datapoint, and the model replayed on it."""
    particles = pyro.plate(PARTICLE_PLATE, num_particles, dim=PARTICLE_DIM)
    guide_trace = poutine.trace(particles(guide)).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def _per_point(name: str, site: dict) -> torch.Tensor:
    """log p of a site, [particles, batch]; every site must sit in the data plate."""
    if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
        raise UsageError(f"sample site {name!r} is outside the {DATA_PLATE!r} plate: pyrovae needs every sample "
                         f"site inside `pyro.plate({DATA_PLATE!r}, len(x))` (per-datapoint latents only)")
    return site["fn"].log_prob(site["value"])


class LogWeights(NamedTuple):
    """Per-particle, per-datapoint terms, each [K, batch]."""

    log_lik: torch.Tensor     # log p(x_i | z_k), all observed sites
    log_prior: torch.Tensor   # log p(z_k), all latent sites of the model
    log_q: torch.Tensor       # log q(z_k | x_i), all latent sites of the guide
    data_scale: float         # num_data / batch, the scale that sums a batch up to the data set
    beta: float | torch.Tensor  # the KL coefficient on the latent sites

    @property
    def log_w(self) -> torch.Tensor:
        """log w_ik = log p(x_i, z_k) - log q(z_k | x_i)."""
        return self.log_lik + self.log_prior - self.log_q


def log_weights(model: Callable, guide: Callable, num_particles: int, *args, **kwargs) -> LogWeights:
    """Draw ``num_particles`` z per datapoint from the guide (vectorized), replay the model on
    them, and return the per-datapoint log densities, unscaled by plates or β."""
    model_trace, guide_trace = particle_traces(model, guide, num_particles, *args, **kwargs)
    log_lik = log_prior = log_q = 0.0
    data_scale, latent_scale = 1.0, None
    for name, site in sample_sites(model_trace):
        if site["is_observed"]:
            log_lik = log_lik + _per_point(name, site)
            data_scale = site["scale"]
        else:
            log_prior = log_prior + _per_point(name, site)
            latent_scale = site["scale"]
    for name, site in sample_sites(guide_trace):
        if not site["is_observed"]:
            log_q = log_q + _per_point(name, site)
    beta = 1.0 if latent_scale is None else latent_scale / data_scale
    return LogWeights(log_lik, log_prior, log_q, data_scale, beta)


def log_mean_exp(log_w: torch.Tensor, dim: int = 0, keepdim: bool = False) -> torch.Tensor:
    """log (1/K) Σ_k exp(log_w_k) along ``dim`` (K = its size), computed stably; -inf entries are
    weights of zero. Of K importance log weights per datapoint, the K-sample bound L_K of Burda et
    al. (2016) (:func:`iwae_bound`); of AIS chains' log weights, the AIS estimate."""
    return torch.logsumexp(log_w, dim=dim, keepdim=keepdim) - math.log(log_w.shape[dim])


iwae_bound = log_mean_exp   # L_K = log (1/K) Σ_k w_k per datapoint, K along ``dim``


class ElboTerms(NamedTuple):
    """Per-datapoint terms of the ELBO at β = 1, each [batch]: ELBO = reconstruction - kl."""

    reconstruction: torch.Tensor
    kl: torch.Tensor

    @property
    def elbo(self) -> torch.Tensor:
        return self.reconstruction - self.kl


def closed_form_kl(guide: Callable, latent_sites: int) -> bool:
    """Whether site-wise closed-form KLs are exact for ``guide``: it is mean-field, or has one site."""
    return latent_sites == 1 or can(program_of(guide), "mean_field")


def elbo_terms(model: Callable, guide: Callable, *args, num_samples: int = 1, **kwargs) -> ElboTerms:
    """Per-datapoint (reconstruction, KL) at β = 1 from ``num_samples`` draws z ~ q per point: the
    reconstruction E_q[log p(x | z)] by Monte Carlo, the KL in closed form where exact and
    registered, else by Monte Carlo (module docstring)."""
    model_trace, guide_trace = particle_traces(model, guide, num_samples, *args, **kwargs)
    latents = [(name, site) for name, site in sample_sites(model_trace) if not site["is_observed"]]
    analytic = closed_form_kl(guide, len(latents))
    recon = sum(_per_point(name, site) for name, site in sample_sites(model_trace) if site["is_observed"])
    kl = torch.zeros_like(recon)
    for name, site in latents:
        q_site = guide_trace.nodes[name]
        try:
            if not analytic:
                raise NotImplementedError
            kl = kl + torch.distributions.kl_divergence(q_site["fn"], site["fn"])
        except NotImplementedError:
            kl = kl + _per_point(name, q_site) - _per_point(name, site)
    return ElboTerms(recon.mean(0), kl.mean(0))


def latent_shapes(model: Callable, *args, **kwargs) -> dict[str, tuple[torch.Size, object]]:
    """{site: (event_shape, support)} of the model's latent sites, from one run of the model."""
    trace = poutine.trace(model).get_trace(*args, **kwargs)
    return {name: (site["fn"].event_shape, site["fn"].support)
            for name, site in sample_sites(trace) if not site["is_observed"]}
