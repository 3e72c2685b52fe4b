"""The chains of annealed importance sampling for a Pyro model and guide: their coordinates,
their two log densities from Pyro traces, and one batch of points annealed (:func:`ais_batch`).

The chains live in the start density's own coordinates u, one flat vector per (chain, point)
over all latent sites:

- a site whose q is a transformed distribution (a flow: z = T(u), u from its base Gaussian) is
  annealed in the base space: log q_u(u) = log q_0(u), and the target gains log |det ∂T/∂u|;
  so no flow is ever inverted;
- any other continuous site in the unconstrained space of its support (z = b(u), b =
  ``biject_to(support)``, the identity for real latents), both densities gaining log |det ∂b/∂u|.

Both densities come from Pyro traces: the guide run with its sites set from u (or, for a guide
whose sites depend on x only, its site distributions computed once per batch and reused), and
the model conditioned on the resulting z, summed per datapoint over every site. The Jacobians
cancel in the log weights, so w and p̂ are those of the original coordinates.

Draws are a function of (seed, transition, chain, row) (:mod:`pyrovae.core.noise`): a point's
estimate does not depend on its batchmates, the batch size, an interrupted-and-resumed run, or
the process that evaluates it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ..core.contract import can
from ..core.errors import UsageError, option
from ..core.noise import forked_rng, noise, noise_shape, reparameterize, site_stream, tile_seed
from ..core.programs import DATA_PLATE, is_real, program_of, unconstrained_shape
from ..core.traces import PARTICLE_DIM, PARTICLE_PLATE, log_mean_exp, sample_sites
from ..core.vae import VAE, frozen
from . import diagnostics
from .annealing import anneal, sigmoid_schedule
from .kernels import FusedDensities
from .settings import AISSettings

STEP_SIZE = 0.01                           # the first step size where the start's scale is unknown
STEP_SIZE_FRACTION = 0.5                   # else half the start density's smallest standard deviation
AIS_STREAM, REVERSE_STREAM, TUNE_STREAM = 2, 3, 4   # noise streams beside importance sampling's 0 and 1


# ---------------------------------------------------------------------------- coordinates

def _sum_event(value: torch.Tensor, event_dims: int) -> torch.Tensor:
    return value.reshape(*value.shape[:value.dim() - event_dims], -1).sum(-1) if event_dims else value


def _event_dims(fn) -> int:
    return len(fn.event_shape)


def _in_base_space(fn) -> bool:
    """Whether a site is annealed in its base space: a transformed distribution whose transforms are
    bijections (a flow). Not HalfNormal's |u|: two u give one z, so the base density would count
    the target twice (log 2 too high per site); such a site is annealed in biject_to(support)."""
    return isinstance(fn, torch.distributions.TransformedDistribution) and all(t.bijective for t in fn.transforms)


def _coordinate_shape(fn) -> torch.Size:
    """The event shape of a site's coordinates u: its own, or what its bijections map from (a
    simplex of K numbers lives in K − 1 unconstrained ones)."""
    return noise_shape(fn) if _in_base_space(fn) else unconstrained_shape(fn.event_shape, fn.support)


def _from_coordinates(fn, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, log q_u(u), log |det ∂z/∂u|) for a site with distribution ``fn`` at coordinates u."""
    if _in_base_space(fn):
        log_q = fn.base_dist.log_prob(u)
        log_det = torch.zeros_like(log_q)
        z = u
        for transform in fn.transforms:
            previous, z = z, transform(z)
            log_det = log_det + _sum_event(transform.log_abs_det_jacobian(previous, z),
                                           _event_dims(fn) - transform.domain.event_dim)
        return z, log_q, log_det
    if is_real(fn.support):
        log_q = fn.log_prob(u)
        return u, log_q, torch.zeros_like(log_q)
    bijection = biject_to(fn.support)
    z = bijection(u)
    log_det = _sum_event(bijection.log_abs_det_jacobian(u, z), _event_dims(fn) - bijection.domain.event_dim)
    return z, fn.log_prob(z) + log_det, log_det


def _to_coordinates(fn, z: torch.Tensor) -> torch.Tensor:
    """The coordinates u of a value z (inverts a flow: once per chain, for reverse AIS)."""
    if _in_base_space(fn):
        for transform in reversed(fn.transforms):
            z = transform.inv(z)
        return z
    return biject_to(fn.support).inv(z)


def _draw_coordinates(fn, eps: torch.Tensor) -> torch.Tensor | None:
    """u ~ the site's start density in its coordinates, from standard-normal ``eps`` (None when
    the base is not reparameterizable by a normal draw)."""
    if _in_base_space(fn):
        return reparameterize(fn.base_dist, eps)
    value = reparameterize(fn, eps)
    return None if value is None else biject_to(fn.support).inv(value)


class _Coordinates(Messenger):
    """Runs a guide with its latent sites at coordinates u: in ``draw`` mode u comes from seeded
    noise (the start of the chains), in ``evaluate`` mode from ``u``, in ``invert`` mode from the
    values ``z``. Accumulates log q_u and the log-Jacobians per (chain, point)."""

    def __init__(self, mode: str, u: dict | None = None, z: dict | None = None, eps_for=None):
        super().__init__()
        self.mode, self.u, self.z, self.eps_for = mode, dict(u or {}), z, eps_for
        self.values: dict[str, torch.Tensor] = {}
        self.log_q = self.log_det = 0.0
        self.fns: dict[str, object] = {}
        self.unsupported: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or site_is_subsample(msg):
            return
        name, fn = msg["name"], msg["fn"]
        if fn.support.is_discrete:
            raise UsageError(f"annealed importance sampling needs continuous latent sites; {name!r} is discrete "
                             f"({type(fn).__name__}); use {option('method', 'is')}")
        if self.mode == "draw":
            shape = noise_shape(fn)
            eps = self.eps_for(name, shape)
            u = _draw_coordinates(fn, eps)
            if u is None:   # not reparameterizable by a normal draw: torch's global generator, as eps is shaped
                self.unsupported.add(name)
                lead = eps.dim() - len(shape) - len(fn.batch_shape)
                u = _to_coordinates(fn, fn.sample(eps.shape[:max(lead, 0)]))
            self.u[name] = u
        elif self.mode == "invert":
            self.u[name] = _to_coordinates(fn, self.z[name])
        z, log_q, log_det = _from_coordinates(fn, self.u[name])
        self.values[name], self.fns[name] = z, fn
        self.log_q, self.log_det = self.log_q + log_q, self.log_det + log_det
        msg["value"] = z


@dataclass
class _Sites:
    """The latent sites of a start density: names in sampling order, event shapes, sizes."""

    names: list[str]
    shapes: list[torch.Size]

    @property
    def sizes(self) -> list[int]:
        return [math.prod(shape) for shape in self.shapes]

    def split(self, u: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = u.split(self.sizes, dim=-1)
        return {name: part.reshape(*u.shape[:-1], *shape) for name, part, shape in zip(self.names, parts, self.shapes)}

    def join(self, parts: dict[str, torch.Tensor], lead: int) -> torch.Tensor:
        return torch.cat([parts[name].reshape(*parts[name].shape[:lead], -1) for name in self.names], dim=-1)


class _Target:
    """log q_u(u) and log p(x, z(u)) + log |det ∂z/∂u| for the chains of one batch of points."""

    def __init__(self, model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], index: torch.Tensor, *,
                 chains: int, reuse_sites: bool, compile: bool = False):
        self.model, self.guide, self.batch, self.index, self.chains = model, guide, batch, index, chains
        self.plate = pyro.plate(PARTICLE_PLATE, chains, dim=PARTICLE_DIM)
        probe = _Coordinates("draw", eps_for=lambda name, shape: torch.zeros(tuple(shape), device=batch[0].device,
                                                                             dtype=batch[0].dtype))
        with poutine.block(), probe:
            guide(index, 1.0, *batch)
        self.sites = _Sites(list(probe.values), [_coordinate_shape(fn) for fn in probe.fns.values()])
        self.step_size = self.initial_step_size(probe.fns)
        # a guide whose sites depend on x alone: compute its distributions once, not per leapfrog step
        self.fns = probe.fns if reuse_sites else None
        for fn in probe.fns.values():   # their supports were checked once; no checks per evaluation
            fn._validate_args = False
            if isinstance(fn, torch.distributions.TransformedDistribution):
                fn.base_dist._validate_args = False
        self.unsupported: set[str] = set()
        self.validated, self.compile = False, compile

    def _run_guide(self, messenger: _Coordinates) -> _Coordinates:
        if self.fns is not None:   # the same computation, without rerunning the guide
            for name, fn in self.fns.items():
                msg = {"name": name, "fn": fn, "is_observed": False, "type": "sample", "value": None,
                       "infer": {}, "cond_indep_stack": ()}
                messenger._pyro_sample(msg)
            return messenger
        with poutine.block(), self.plate, messenger:
            self.guide(self.index, 1.0, *self.batch)
        return messenger

    def initial_step_size(self, probe_fns: dict) -> torch.Tensor:
        """Per point [B]: ``STEP_SIZE_FRACTION`` of the start density's smallest standard
        deviation in its coordinates (HMC is stable for steps below about twice it), clamped to
        [1e-3, 0.5]; ``STEP_SIZE`` where a site's scale is unknown. Tuned step sizes are multiples of it."""
        scales = []
        for fn in probe_fns.values():
            base = fn.base_dist if _in_base_space(fn) else fn
            try:
                std = base.stddev
            except NotImplementedError:
                return torch.full(self.batch[0].shape[:1], STEP_SIZE, device=self.batch[0].device)
            scales.append(std.reshape(*std.shape[:std.dim() - len(base.event_shape)], -1).min(-1).values)
        smallest = torch.stack([s.expand(self.batch[0].shape[:1]) for s in scales]).min(0).values
        return (STEP_SIZE_FRACTION * smallest).clamp(1e-3, 0.5).to(self.batch[0].dtype)

    def start(self, eps_for) -> torch.Tensor:
        """Coordinates [C, B, D] of z ~ q, drawn from seeded noise ([C, B, *event] per site)."""
        drawn = self._run_guide(_Coordinates("draw", eps_for=eps_for))
        self.unsupported |= drawn.unsupported
        return self.sites.join(drawn.u, 2)

    def coordinates_of(self, z: dict[str, torch.Tensor]) -> torch.Tensor:
        """Coordinates [C, B, D] of given values (each [C, B, *event])."""
        inverted = self._run_guide(_Coordinates("invert", z=z))
        return self.sites.join(inverted.u, 2)

    def log_densities(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # the first evaluation validates supports and shapes; then the checks only cost time, and a
        # chain that wanders off (a NaN or infinite proposal) must be rejected by HMC, not raise
        # (the densities too: a distribution reads the validation flag when its log_prob runs)
        with pyro.validation_enabled(is_validation_enabled() and not self.validated):
            at = self._run_guide(_Coordinates("evaluate", u=self.sites.split(u)))
            conditioned = poutine.condition(self.model, data=at.values)
            with FusedDensities(self.compile):
                trace = poutine.trace(self.plate(conditioned)).get_trace(self.index, 1.0, *self.batch)
            log_p = 0.0
            for name, site in sample_sites(trace):
                if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
                    raise UsageError(f"sample site {name!r} is outside the {DATA_PLATE!r} plate")
                log_p = log_p + site["fn"].log_prob(site["value"])
        self.validated = True
        shape = u.shape[:-1]
        return (torch.as_tensor(at.log_q).expand(shape),
                (log_p + torch.as_tensor(at.log_det)).expand(shape))


# ---------------------------------------------------------------------------- one batch

def _noise_source(seed: int, stream: int, chains: int, rows: range, like: torch.Tensor, kind: str):
    """(t, shape) -> noise of transition t for these chains and rows, seeded per tile."""
    def draw(t: int, shape: tuple[int, ...]) -> torch.Tensor:
        return noise(seed, tile_seed(stream, t), range(chains), rows, tuple(shape[2:]),
                     like if kind == "normal" else like.double(), kind=kind)
    return draw


def transition_scales(step_sizes: tuple[float, ...], reverse: bool) -> list[float]:
    """Per transition t = 1..T, the step size (a multiple of each point's start scale) of the
    temperature it targets, from ``step_sizes`` per temperature β_0..β_T: forward transition t
    targets β_t, reverse transition t targets β_(T-t), so both directions use the same kernels."""
    steps = len(step_sizes) - 1
    return [step_sizes[steps - t] if reverse else step_sizes[t] for t in range(1, steps + 1)]


def ais_batch(vae: VAE, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, settings: AISSettings, *,
              index: torch.Tensor | None = None, reverse_from: dict | None = None, tune: bool = False,
              progress: Callable[[int, int], None] | None = None, unsupported: set | None = None
              ) -> dict[str, np.ndarray]:
    """Per-point AIS values of one batch: log p̂ = log mean_c w_c over the chains (or, with
    ``reverse_from``, the values of an exact posterior sample per site, the reverse estimate
    -log mean_c w_rev,c), the chains' log weights, acceptance, step sizes, and the chains' ESS.
    ``rows`` are the points' global numbers, which seed their draws; ``index`` is what the guide
    gets (its rows; default: ``rows``); ``progress(t, T)`` after every transition.

    The step sizes: ``settings.step_sizes`` per temperature, frozen (times each point's start
    scale); or, with ``settings.adapt_step_size``, adapted per chain during the run; either way
    jittered per transition and chain (:data:`~.annealing.JITTER`, from seeded noise). ``tune``
    makes this the tuning round instead: adapted chains on their own seeds, whose values add
    ``step_ratio`` [B, T], the median over chains of the step size after each transition over the
    point's start scale (what :func:`~.ais.tune_step_sizes` takes the median of)."""
    model, like = vae.bound()[0], batch[0]
    chains, seed = settings.chains, settings.seed
    if not (tune or settings.adapt_step_size or settings.step_sizes is not None):
        raise ValueError("ais_batch needs settings.step_sizes (tune them first), adapt_step_size or tune=True")
    index = torch.arange(rows.start, rows.stop, device=like.device) if index is None else index
    stream = TUNE_STREAM if tune else AIS_STREAM   # the tuning round's chains are not the estimate's
    # draws the seeded noise cannot give (a Dirichlet's, a Gamma's) come from torch's generator:
    # forked and seeded by the tile, so they repeat on resume and leave the caller's as it was
    with forked_rng(like.device, tile_seed(seed, stream, int(reverse_from is not None), rows.start)):
        result, base = _anneal_batch(vae, model, guide, batch, rows, index=index, settings=settings, stream=stream,
                                     reverse_from=reverse_from, tune=tune, progress=progress, unsupported=unsupported)
    log_w = result.log_w                                  # [C, B]
    weights = torch.softmax(log_w, 0)
    # forward: log mean w estimates log p(x) from below; reverse: E[w] = 1 / p(x), an upper bound
    values = {"log_px": log_mean_exp(log_w, 0) if reverse_from is None else -log_mean_exp(log_w, 0),
              "chain_ess": 1.0 / (weights ** 2).sum(0) / chains,
              "accept_rate": result.accept_rate.mean(0), "step_size": result.step_size.double().mean(0),
              "log_w": log_w.T}
    if chains >= diagnostics.MIN_KHAT_DRAWS:
        values["khat"] = torch.as_tensor(diagnostics.psis_khat(log_w.T))
    if tune:
        values["step_ratio"] = (result.step_sizes / base).median(1).values.T   # [B, T]
    return {name: value.detach().cpu().double().numpy() for name, value in values.items()}


def _anneal_batch(vae: VAE, model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, *,
                  index: torch.Tensor, settings: AISSettings, stream: int, reverse_from: dict | None, tune: bool,
                  progress: Callable[[int, int], None] | None, unsupported: set | None):
    """The chains of :func:`ais_batch`, run: the annealing result and each point's start scale."""
    like, chains, seed = batch[0], settings.chains, settings.seed
    reuse = can(program_of(guide), "mean_field")
    target = _Target(model, guide, batch, index, chains=chains, reuse_sites=reuse, compile=bool(settings.compile))
    betas = sigmoid_schedule(settings.steps)
    if reverse_from is None:
        u0 = target.start(lambda name, shape: noise(seed, stream ^ site_stream(name), range(chains), rows,
                                                    tuple(shape), like))
    else:
        u0 = target.coordinates_of({name: value.expand(chains, *value.shape) for name, value in reverse_from.items()})
        betas, stream = betas.flip(0), REVERSE_STREAM
    if unsupported is not None:
        unsupported |= target.unsupported
    adapt = tune or settings.adapt_step_size
    scale = None if adapt else transition_scales(settings.step_sizes, reverse_from is not None)
    base = target.step_size.expand(chains, -1)   # each point's start scale
    with frozen(vae):
        result = anneal(target.log_densities, u0.detach(), betas, leapfrog=settings.leapfrog, step_size=base,
                        randn=_noise_source(seed, stream * 7919 + 1, chains, rows, like, "normal"),
                        rand=_noise_source(seed, stream * 7919 + 2, chains, rows, like, "uniform"),
                        jitter=_noise_source(seed, stream * 7919 + 3, chains, rows, like, "uniform"),
                        adapt=adapt, step_scale=scale, record_step_sizes=tune, progress=progress)
    return result, base
