"""log p(x) by annealed importance sampling from Pyro traces, and the BDMC sandwich.

For each datapoint x, C chains anneal from a start density q(z | x) (the guide, a per-point fit,
or the prior) to the posterior p(z | x) ∝ p(x, z) along f_t ∝ q^(1-β_t) p(x, ·)^(β_t) with HMC
transitions (:mod:`.annealing`), and

    log p̂(x) = log (1/C) Σ_c w_c,     log w_c = Σ_t (β_t - β_{t-1}) [log p(x, z_c,t-1) - log q(z_c,t-1 | x)],

a stochastic lower bound of log p(x) that tightens as T grows (Neal 2001; Wu, Burda,
Salakhutdinov & Grosse 2017 evaluate decoder-based models this way).

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

Draws are a function of (seed, transition, chain, row) (:mod:`.driver`): a point's estimate
does not depend on its batchmates, the batch size, an interrupted-and-resumed run, or the
process that evaluates it.

BDMC (Grosse, Ghahramani & Adams 2015): for (z, x) drawn from the model, z is an exact posterior
sample of x, and AIS with the schedule reversed, started at z, gives E[w_rev] = 1 / p(x): its
-log p̂_rev is a stochastic upper bound, forward AIS a lower one, and the gap between them bounds
the error of forward AIS on such data: a user reads from it how many steps an evaluation needs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import biject_to

from ..core import interrupts
from ..core.contract import can
from ..core.errors import UsageError, option
from ..core.noise import noise, reparameterize, site_stream, tile_seed
from ..core.programs import DATA_PLATE, as_batch, is_real, num_rows, program_of, rows_of
from ..core.traces import PARTICLE_DIM, PARTICLE_PLATE, sample_sites, unconditioned_observation
from ..core.vae import VAE, frozen
from . import diagnostics
from .annealing import anneal, log_mean_exp, sigmoid_schedule
from .driver import Partial, run_batches
from .importance import COMPILE_PAIRS, _progress, importance_batch, proposal_guide
from .kernels import FusedDensities

STEPS, CHAINS, LEAPFROG = 1000, 16, 5      # Wu et al. (2017) use up to 10,000 steps and 16 chains
STEP_SIZE = 0.01                           # the first step size where the start's scale is unknown
STEP_SIZE_FRACTION = 0.5                   # else half the start density's smallest standard deviation
PAIRS = 10_000                             # (chain, point) pairs per batch: [pairs, pixels] buffers ~31 MB
AIS_STREAM, REVERSE_STREAM = 2, 3          # noise streams beside importance sampling's 0 and 1
IS_K = 1000                                # importance samples of the reference IS estimate


# ---------------------------------------------------------------------------- coordinates

def _sum_event(value: torch.Tensor, event_dims: int) -> torch.Tensor:
    return value.reshape(*value.shape[:value.dim() - event_dims], -1).sum(-1) if event_dims else value


def _event_dims(fn) -> int:
    return len(fn.event_shape)


def _from_coordinates(fn, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z, log q_u(u), log |det ∂z/∂u|) for a site with distribution ``fn`` at coordinates u."""
    if isinstance(fn, torch.distributions.TransformedDistribution):
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
    if isinstance(fn, torch.distributions.TransformedDistribution):
        for transform in reversed(fn.transforms):
            z = transform.inv(z)
        return z
    return biject_to(fn.support).inv(z)


def _draw_coordinates(fn, eps: torch.Tensor) -> torch.Tensor | None:
    """u ~ the site's start density in its coordinates, from standard-normal ``eps`` (None when
    the base is not reparameterizable by a normal draw)."""
    if isinstance(fn, torch.distributions.TransformedDistribution):
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
            u = _draw_coordinates(fn, self.eps_for(name, fn.event_shape))
            if u is None:   # not reparameterizable by a normal draw: torch's global generator
                self.unsupported.add(name)
                u = _to_coordinates(fn, fn.sample())
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

    def __init__(self, model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], index: torch.Tensor,
                 chains: int, reuse_sites: bool, compile: bool = False):
        self.model, self.guide, self.batch, self.index, self.chains = model, guide, batch, index, chains
        self.plate = pyro.plate(PARTICLE_PLATE, chains, dim=PARTICLE_DIM)
        probe = _Coordinates("draw", eps_for=lambda name, shape: torch.zeros(tuple(shape), device=batch[0].device,
                                                                             dtype=batch[0].dtype))
        with poutine.block(), probe:
            guide(index, 1.0, *batch)
        self.sites = _Sites(list(probe.values), [fn.event_shape for fn in probe.fns.values()])
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
        [1e-3, 0.5]; ``STEP_SIZE`` where a site's scale is unknown. Adaptation takes over from there."""
        scales = []
        for fn in probe_fns.values():
            base = fn.base_dist if isinstance(fn, torch.distributions.TransformedDistribution) else fn
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
        with pyro.validation_enabled(is_validation_enabled() and not self.validated):
            at = self._run_guide(_Coordinates("evaluate", u=self.sites.split(u)))
            conditioned = poutine.condition(self.model, data=at.values)
            with FusedDensities(self.compile):
                trace = poutine.trace(self.plate(conditioned)).get_trace(self.index, 1.0, *self.batch)
        self.validated = True
        log_p = 0.0
        for name, site in sample_sites(trace):
            if not any(frame.name == DATA_PLATE for frame in site["cond_indep_stack"]):
                raise ValueError(f"sample site {name!r} is outside the {DATA_PLATE!r} plate")
            log_p = log_p + site["fn"].log_prob(site["value"])
        shape = u.shape[:-1]
        return (torch.as_tensor(at.log_q).expand(shape),
                (log_p + torch.as_tensor(at.log_det)).expand(shape))


# ---------------------------------------------------------------------------- one batch

def _noise_source(seed: int, stream: int, chains: int, rows: range, like: torch.Tensor, kind: str):
    """(t, shape) -> noise of transition t for these chains and rows, seeded per tile."""
    def draw(t: int, shape: tuple[int, ...]) -> torch.Tensor:
        return noise(seed, tile_seed(stream, t), range(chains), rows, tuple(shape[2:]),
                     like if kind == "normal" else like.double(), kind)
    return draw


def ais_batch(vae: VAE, guide: Callable, batch: tuple[torch.Tensor, ...], index: torch.Tensor, rows: range,
              steps: int, chains: int, leapfrog: int, seed: int, reverse_from: dict | None = None,
              progress: Callable[[int, int], None] | None = None, unsupported: set | None = None,
              compile: bool = False) -> dict[str, np.ndarray]:
    """Per-point AIS values of one batch: log p̂ over the chains (or, with ``reverse_from``, the
    values of an exact posterior sample per site, the reverse estimate -log p̂_rev), the chains'
    log weights, acceptance, step sizes, and the chains' ESS."""
    model = vae.bound()[0]
    like = batch[0]
    reuse = can(program_of(guide), "mean_field")
    target = _Target(model, guide, batch, index, chains, reuse, compile)
    betas = sigmoid_schedule(steps)
    stream = AIS_STREAM
    if reverse_from is None:
        u0 = target.start(lambda name, shape: noise(seed, AIS_STREAM ^ site_stream(name), range(chains), rows,
                                                    tuple(shape), like))
    else:
        u0 = target.coordinates_of({name: value.expand(chains, *value.shape) for name, value in reverse_from.items()})
        betas, stream = betas.flip(0), REVERSE_STREAM
    if unsupported is not None:
        unsupported |= target.unsupported
    with frozen(vae):
        result = anneal(target.log_densities, u0.detach(), betas, leapfrog=leapfrog,
                        step_size=target.step_size.expand(chains, -1),
                        randn=_noise_source(seed, stream * 7919 + 1, chains, rows, like, "normal"),
                        rand=_noise_source(seed, stream * 7919 + 2, chains, rows, like, "uniform"),
                        progress=progress)
    log_w = result.log_w                                  # [C, B]
    weights = torch.softmax(log_w, 0)
    # forward: log mean w estimates log p(x) from below; reverse: E[w] = 1 / p(x), an upper bound
    values = {"log_px": log_mean_exp(log_w, 0) if reverse_from is None else -log_mean_exp(log_w, 0),
              "chain_ess": 1.0 / (weights ** 2).sum(0) / chains,
              "accept_rate": result.accept_rate.mean(0), "step_size": result.step_size.double().mean(0),
              "log_w": log_w.T}
    if chains >= diagnostics.MIN_KHAT_DRAWS:
        values["khat"] = torch.as_tensor(diagnostics.psis_khat(log_w.T))
    return {name: value.detach().cpu().double().numpy() for name, value in values.items()}


# ---------------------------------------------------------------------------- estimators

@dataclass
class AISResult:
    """Per-datapoint AIS estimates (numpy float64, length N), in nats, and what they were made with."""

    steps: int
    chains: int
    leapfrog: int
    proposal: str
    data_dim: int
    log_px: np.ndarray           # log mean_c w_c
    log_w: np.ndarray            # [N, C] the chains' log weights
    accept_rate: np.ndarray      # mean Metropolis acceptance probability over transitions and chains
    step_size: np.ndarray        # final HMC step size, mean over chains
    chain_ess: np.ndarray        # (Σ w)² / Σ w² / C: 1 when the chains agree
    khat: np.ndarray | None = None          # PSIS k-hat across chains, when C allows
    reference: dict = field(default_factory=dict)   # ELBO and IS estimate of the same points
    chunk_invariant: bool = True

    @property
    def n(self) -> int:
        return len(self.log_px)

    def columns(self) -> dict[str, np.ndarray]:
        """Per-point columns for --per-point."""
        columns = {"index": np.arange(self.n), "log_px": self.log_px, "accept_rate": self.accept_rate,
                   "step_size": self.step_size, "chain_ess": self.chain_ess}
        if self.khat is not None:
            columns["khat"] = self.khat
        columns.update({key: value for key, value in self.reference.items() if isinstance(value, np.ndarray)})
        columns.update({f"log_w_{c}": self.log_w[:, c] for c in range(self.log_w.shape[1])})
        return columns

    def summary(self) -> dict:
        se = lambda a: _finite(diagnostics.mean_and_se(a)[1])  # noqa: E731
        out = {
            "method": "ais",
            "log_likelihood": float(np.mean(self.log_px)),
            "log_likelihood_se": se(self.log_px),
            "steps": self.steps, "chains": self.chains, "leapfrog": self.leapfrog, "n": self.n,
            "proposal": self.proposal,
            "bits_per_dim": float(np.mean(diagnostics.bits_per_dim(self.log_px, self.data_dim))),
            "accept_rate_mean": float(np.mean(self.accept_rate)),
            "step_size": {"median": float(np.median(self.step_size)), "min": float(np.min(self.step_size)),
                          "max": float(np.max(self.step_size))},
            "chain_ess_frac_mean": float(np.mean(self.chain_ess)),
            "khat_frac_gt_0_7": None if self.khat is None else float(np.mean(self.khat > 0.7)),
            "khat_reason": None if self.khat is not None else (
                f"k-hat across chains needs at least {diagnostics.MIN_KHAT_DRAWS} chains; "
                f"{option('chains', self.chains)}"),
            "chunk_invariant": self.chunk_invariant,
        }
        for key in ("elbo", "is_log_likelihood"):
            if key in self.reference:
                out[key] = float(np.mean(self.reference[key]))
                out[f"{key}_se"] = se(self.reference[key])
        if "is_log_likelihood" in self.reference:
            out["is_k"] = self.reference["is_k"]
            out["ais_minus_is"] = float(np.mean(self.log_px - self.reference["is_log_likelihood"]))
        return out


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


def check_ais_options(steps: int, chains: int, leapfrog: int) -> None:
    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise UsageError(f"{option(name)} must be a whole number >= 1, got {value}")


@torch.no_grad()
def estimate_log_likelihood_ais(vae: VAE, data, steps: int = STEPS, chains: int = CHAINS, leapfrog: int = LEAPFROG,
                                proposal="guide", batch_size: int | None = None, seed: int = 0,
                                progress: bool | Callable[[int, int], None] = False, is_k: int = IS_K,
                                partial_path: str | Path | None = None, resume: bool = False,
                                options: dict | None = None, compile: bool | None = None) -> AISResult:
    """log p(x_i) for every row of ``data`` by AIS: ``steps`` intermediate distributions (a sigmoid
    schedule), ``chains`` chains per point, HMC with ``leapfrog`` steps and per-chain adapted step
    sizes. ``proposal`` as for :func:`~pyrovae.evaluation.importance.estimate_log_likelihood`.
    ``batch_size`` points (default: ``PAIRS`` // chains) anneal together; memory is flat in
    ``steps``. ``is_k``: importance samples of a reference IS estimate on the same points (0: none).
    ``compile``: fuse the log densities and their gradients with torch.compile (default: from
    ``COMPILE_PAIRS`` decoder passes on). Costs about steps x leapfrog x chains forward and
    backward passes per point."""
    check_ais_options(steps, chains, leapfrog)
    data = tuple(t.to(device=vae.device, dtype=vae.dtype if t.is_floating_point() else t.dtype)
                 for t in as_batch(data))
    n, data_dim = num_rows(data), vae.check(data, continuous=True).data_dim
    batch_size = batch_size or max(1, PAIRS // chains)
    compile = n * chains * steps * leapfrog >= COMPILE_PAIRS if compile is None else compile
    model = vae.bound()[0]
    guide, proposal_name, encodes = proposal_guide(vae, proposal, n)
    unsupported: set[str] = set()
    total = n * steps
    report = _progress(progress, total, "AIS", unit="point-step")
    done_before = [0]

    def evaluate(rows: range) -> dict[str, np.ndarray]:
        batch = rows_of(data, rows)
        index = torch.arange(rows.start, rows.stop, device=batch[0].device)
        base = done_before[0]

        def step(t: int, steps_total: int) -> None:
            report(base + t * len(rows))
            interrupts.check()   # a signal drops this batch at once: the finished ones are kept

        values = ais_batch(vae, guide, batch, index, rows, steps, chains, leapfrog, seed, progress=step,
                           unsupported=unsupported, compile=compile)
        if is_k:
            reference = importance_batch(model, guide, batch, index, rows, is_k, 50, seed, False, unsupported,
                                         encodes=False)
            values["is_log_likelihood"] = reference["log_px"]
            values["elbo"] = reference["recon"] - reference["kl"]
        done_before[0] += len(rows) * steps
        return values

    options = {"method": "ais", "steps": steps, "chains": chains, "leapfrog": leapfrog, "proposal": proposal_name,
               "seed": seed, "n": n, "is_k": is_k, **(options or {})}
    path = Path(partial_path) if partial_path else None
    partial = Partial.load(path, n, options) if resume and path else Partial(n, options, path)
    done_before[0] = int(partial.done.sum()) * steps
    try:
        with vae.param_store():   # one scope of the param store for the whole run, not one per call
            values = run_batches(n, batch_size, evaluate, partial)
    finally:
        report.close()
    partial.discard()
    reference = {key: values[key] for key in ("is_log_likelihood", "elbo") if key in values}
    if is_k:
        reference["is_k"] = is_k
    return AISResult(steps, chains, leapfrog, proposal_name, data_dim, values["log_px"], values["log_w"],
                     values["accept_rate"], values["step_size"], values["chain_ess"], values.get("khat"),
                     reference, not unsupported)


@dataclass
class BDMCResult:
    """Per simulated point: the forward (lower) and reverse (upper) AIS estimates of log p(x), and
    the IS estimate and ELBO of the same points; ``data`` are the simulated points."""

    steps: int
    chains: int
    leapfrog: int
    proposal: str
    seed: int
    lower: np.ndarray
    upper: np.ndarray
    data: tuple[torch.Tensor, ...]
    is_log_likelihood: np.ndarray | None = None
    elbo: np.ndarray | None = None
    is_k: int = 0

    def summary(self) -> dict:
        out = {"method": "bdmc", "n": len(self.lower), "steps": self.steps, "chains": self.chains,
               "leapfrog": self.leapfrog, "proposal": self.proposal, "seed": self.seed}
        for name, values in (("forward_lower_bound", self.lower), ("reverse_upper_bound", self.upper),
                             ("gap", self.upper - self.lower)):
            out[name], out[f"{name}_se"] = diagnostics.mean_and_se(values)
        if self.is_log_likelihood is not None:
            out["is_k"] = self.is_k
            out["is_log_likelihood"], out["is_log_likelihood_se"] = diagnostics.mean_and_se(self.is_log_likelihood)
            out["forward_minus_is"], out["forward_minus_is_se"] = diagnostics.mean_and_se(
                self.lower - self.is_log_likelihood)
            out["elbo"] = float(np.mean(self.elbo))
        return out


@torch.no_grad()
def bdmc(vae: VAE, template, steps: int = STEPS, chains: int = CHAINS, leapfrog: int = LEAPFROG, seed: int = 0,
         proposal="guide", batch_size: int | None = None, is_k: int = IS_K,
         progress: bool = False, partial_path: str | Path | None = None, resume: bool = False,
         options: dict | None = None) -> BDMCResult:
    """The BDMC sandwich on data simulated from the model, one point per row of ``template``
    (whose x values are replaced; other tensors, e.g. labels, condition the model).

    For each simulated (z, x): forward AIS from the proposal gives a stochastic lower bound of
    log p(x), reverse AIS from z an upper bound (Grosse et al. 2015); with them come the IS
    estimate (``is_k`` draws from the proposal) and the ELBO of the same points. The simulation
    is a function of ``seed``: an interrupted run saves its finished points in ``partial_path``
    and ``resume`` continues from them, as for :func:`estimate_log_likelihood_ais`."""
    check_ais_options(steps, chains, leapfrog)
    template = tuple(t.to(device=vae.device) for t in as_batch(template))
    n = num_rows(template)
    vae.check(template, continuous=True)
    batch_size = batch_size or max(1, PAIRS // chains)
    model, _ = vae.bound()
    devices = [vae.device] if vae.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        simulated = poutine.trace(poutine.uncondition(model)).get_trace(None, 1.0, *template)
    observed, _ = unconditioned_observation(simulated)
    latents = {name: site["value"] for name, site in sample_sites(simulated) if name != observed}
    data = (simulated.nodes[observed]["value"].detach(), *template[1:])
    guide, proposal_name, _ = proposal_guide(vae, proposal, n)
    report = _progress(progress, 2 * n * steps, "BDMC", unit="point-step")
    done = [0]

    def evaluate(rows: range) -> dict[str, np.ndarray]:
        batch = rows_of(data, rows)
        index = torch.arange(rows.start, rows.stop, device=batch[0].device)

        def step(t: int, total: int) -> None:
            report(done[0] + t * len(rows))
            interrupts.check()   # a signal drops this batch at once: the finished ones are kept

        forward = ais_batch(vae, guide, batch, index, rows, steps, chains, leapfrog, seed, progress=step)
        done[0] += len(rows) * steps
        reverse = ais_batch(vae, guide, batch, index, rows, steps, chains, leapfrog, seed,
                            reverse_from={name: value[rows.start:rows.stop] for name, value in latents.items()},
                            progress=step)
        done[0] += len(rows) * steps
        values = {"forward": forward["log_px"], "reverse": reverse["log_px"]}
        if is_k:
            reference = importance_batch(model, guide, batch, index, rows, is_k, 50, seed, False, set(), False)
            values.update({"is": reference["log_px"], "elbo": reference["recon"] - reference["kl"]})
        return values

    options = {"method": "bdmc", "steps": steps, "chains": chains, "leapfrog": leapfrog, "proposal": proposal_name,
               "seed": seed, "n": n, "is_k": is_k, **(options or {})}
    path = Path(partial_path) if partial_path else None
    partial = Partial.load(path, n, options) if resume and path else Partial(n, options, path)
    done[0] = 2 * int(partial.done.sum()) * steps
    try:
        with vae.param_store():
            out = run_batches(n, batch_size, evaluate, partial)
    finally:
        report.close()
    partial.discard()
    return BDMCResult(steps, chains, leapfrog, proposal_name, seed, out["forward"], out["reverse"], data,
                      out.get("is"), out.get("elbo"), is_k)
