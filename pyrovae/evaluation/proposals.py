"""What an estimator draws from: the proposal q(z | x_i) of importance sampling, the start of AIS.

A proposal is named (``"guide"``: the VAE's own; ``"prior"``: p(z)), a guide program over the
evaluated rows (e.g. a fitted :class:`~pyrovae.guides.MeanFieldGuide`), or a (loc, scale) pair
of [N, D] tensors for a one-site model. Which proposal suits the points of a run (its encoder,
a per-point fit, a per-datapoint guide's own rows) is chosen by
:func:`pyrovae.workflows.evaluating.points_and_proposal`.
"""
from __future__ import annotations

from typing import Callable, Union

import torch
from pyro import poutine

from ..core.contract import can
from ..core.errors import UsageError, option
from ..core.programs import bind
from ..core.vae import VAE
from ..guides.meanfield import MeanFieldGuide

Proposal = Union[str, Callable, tuple[torch.Tensor, torch.Tensor]]


def table_guide(loc: torch.Tensor, scale: torch.Tensor, site: str = "z") -> Callable:
    """q(site | x_i) = N(loc[i], diag(scale[i]²)) for a fixed [N, D] table, indexed by ``index``."""
    return MeanFieldGuide.from_moments({site: (loc, scale)}).requires_grad_(False)


def prior_guide(model: Callable) -> Callable:
    """The model's prior p(z) as the proposal (ancestral draws of the latent sites, the observed
    sites hidden): log p̂(x) = log mean_k p(x | z_k), a deliberately poor check."""
    return poutine.block(model, hide_fn=lambda msg: msg["is_observed"])


def proposal_guide(vae: VAE, proposal: Proposal, n: int) -> tuple[Callable, str, bool]:
    """(bound guide, name, whether it encodes new x) for ``proposal`` over ``n`` rows: ``"guide"``
    (the VAE's own), ``"prior"``, a guide program over the rows, or a (loc, scale) pair of [n, D]
    tensors for a one-site model."""
    model, guide = vae.bound()
    if isinstance(proposal, str):
        if proposal == "guide":
            return guide, "guide", vae.can("amortized")
        if proposal == "prior":
            return prior_guide(model), "prior", False
        raise UsageError(f"unknown proposal {proposal!r}; use {option('proposal', 'guide')}, "
                         f"{option('proposal', 'prior')}, a guide, or a (loc, scale) pair")
    if isinstance(proposal, tuple):
        proposal = _table(vae, proposal, n)
    return bind(proposal), "table", can(proposal, "amortized") and not can(proposal, "per_datapoint")


def _table(vae: VAE, proposal: tuple, n: int) -> Callable:
    sites = latent_site_names(vae)
    if len(sites) != 1:
        raise UsageError(f"a (loc, scale) proposal needs a model with one latent site; this one has {sites}: "
                         "pass a guide over the rows instead")
    loc, scale = (torch.as_tensor(t).to(device=vae.device, dtype=vae.dtype) for t in proposal)
    if loc.dim() != 2 or loc.shape[0] != n or scale.shape != loc.shape:
        raise UsageError(f"a (loc, scale) proposal must be two [{n}, latent_dim] tensors, one row per point; "
                         f"got {tuple(loc.shape)} and {tuple(scale.shape)}")
    return table_guide(loc, scale, site=sites[0])


def latent_site_names(vae: VAE) -> list[str]:
    """The model's latent sites, as the check of the programs found them (estimators check first)."""
    if vae.info is None:
        raise RuntimeError("the programs are checked (vae.check(data)) before a proposal is resolved")
    return list(vae.info.latent)
