"""Importance-sampling estimate of the marginal likelihood log p(x) of a trained model.

For each datapoint x_i, draw K samples z_k ~ q(z | x_i) from a proposal and estimate

    log p̂(x_i) = log (1/K) Σ_k w_ik,    log w_ik = log p(x_i, z_k) - log q(z_k | x_i),

the K-sample importance-weighted bound L_K of Burda, Grosse & Salakhutdinov (2016),
"Importance Weighted Autoencoders" (their log-likelihood estimate uses K = 5000).
E[log p̂(x_i)] ≤ log p(x_i), with equality as K → ∞ when q covers the posterior; the gap
shrinks like Var(w) / (2 K E[w]²). From the same draws we report L_k for smaller k
(k = 1 is the ELBO), the ESS fraction and the PSIS Pareto k-hat of the weights (Yao et al.
2018; Vehtari et al. 2024): with k-hat > 0.7 the estimate is unreliable at any practical K.

The log weights come from Pyro traces (:func:`pyrovae.core.traces.log_weights`: the model
replayed on the proposal's draws, summed over every latent site), chunked over particles so the
decoder's buffers stay flat in K; only the [K, batch] log weights of one batch of points are
kept. Draws are seeded per (site, particle, row) (:mod:`.driver`), so the results do not depend
on ``batch_size``, ``chunk_size`` or a resumed interruption.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample
from tqdm import tqdm

from ..core import heap, interrupts
from ..core.contract import can
from ..core.distributed import current
from ..core.errors import UsageError, option
from ..core.files import atomic_path
from ..core.noise import seeded_noise, with_noise
from ..core.programs import Data, as_batch, bind, num_rows, rows_of
from ..core.traces import iwae_bound, log_weights
from ..core.vae import VAE
from ..guides.meanfield import MeanFieldGuide
from . import diagnostics
from .driver import Partial, available_memory, check_memory, run_batches
from .kernels import FusedDensities

BATCH_SIZE, CHUNK_SIZE = 200, 50   # datapoints x particles per decoder pass (benchmarks/bench_evaluate.py)
IWAE_KS = (1, 5, 50)        # bounds L_k reported besides L_K
KHAT_BAD = 0.7              # Vehtari et al. (2024): above it, IS estimates are unreliable
UNRELIABLE_SHARE = 0.05     # flag the estimate when more points than this have k-hat > KHAT_BAD
COMPILE_PAIRS = 1_000_000  # auto-compile from here: ~5 s of eager work vs 1 s of compiling (11 s the first time)
RELEASE_PAIRS = 1_000_000   # return the heap's free pages after this many (point, particle) pairs
IS_STREAM = 0

Proposal = Union[str, Callable, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LogLikelihoodResult:
    """Per-datapoint estimates (numpy float64 arrays of length N), in nats."""

    k: int
    proposal: str
    data_dim: int
    log_px: np.ndarray          # log p̂(x_i) with all K draws (= L_K)
    elbo: np.ndarray            # recon - kl of the proposal: the mean of log w over the K draws (= L_1)
    recon: np.ndarray           # E_q[log p(x_i | z)], the mean over the K draws
    kl: np.ndarray              # KL(q(z | x_i) || p(z)) = recon - elbo, from the same draws
    ess_frac: np.ndarray        # ESS / K
    khat: np.ndarray            # PSIS Pareto k-hat (NaN when K is too small to fit a tail)
    iwae: dict[int, np.ndarray] = field(default_factory=dict)  # k -> L_k estimate per point
    active_units: dict[str, int] | None = None   # per latent site, for a guide with an encoder
    chunk_invariant: bool = True   # False: some proposal site drew from torch's global generator
    method: str = "is"

    @property
    def n(self) -> int:
        return len(self.log_px)

    def advice(self, ais_option: str | None = None) -> str:
        """What to do about heavy-tailed weights, given the proposal already in use."""
        ais = f"annealed importance sampling ({ais_option or option('method', 'ais')})"
        if self.proposal == "guide":
            return (f"use a proposal closer to the posterior ({option('proposal', 'fit')}) or {ais}, which does "
                    "not rely on the proposal's tails")
        return f"the proposal is already fitted per point; use {ais}, which does not rely on the proposal's tails"

    def summary(self, ais_option: str | None = None) -> dict:
        """Means over the N points, their standard errors (std / sqrt(N)), and diagnostics. The
        ELBO, reconstruction and KL are those of the proposal q. JSON-safe: a value that is not
        finite (the SE of one point, k-hat without a tail) is None."""
        n = self.n
        se = lambda a: _finite(diagnostics.mean_and_se(a)[1])  # noqa: E731
        khat_known = bool(np.isfinite(self.khat).any() or np.isneginf(self.khat).any()) and self.k >= diagnostics.MIN_KHAT_DRAWS
        khat = np.where(np.isnan(self.khat), np.inf, self.khat)   # an unknown k-hat counts as a bad one
        frac_bad = float(np.mean(khat > KHAT_BAD)) if khat_known else None
        reliable = None if frac_bad is None else frac_bad <= UNRELIABLE_SHARE
        warning = None
        if reliable is False:
            warning = (f"{frac_bad:.1%} of the {n} points have Pareto k-hat > {KHAT_BAD}: their importance weights "
                       f"are heavy-tailed, so log p(x) is likely underestimated and its SE is not trustworthy. "
                       f"More samples help little against heavy tails; {self.advice(ais_option)}.")
        khat_reason = None if khat_known else (
            f"k-hat needs at least {diagnostics.MIN_KHAT_DRAWS} draws per point to fit a tail; "
            f"K = {self.k}: pass {option('k')} {diagnostics.MIN_KHAT_DRAWS} or more")
        return {
            "method": self.method,
            "log_likelihood": float(np.mean(self.log_px)),
            "log_likelihood_se": se(self.log_px),
            "elbo": float(np.mean(self.elbo)),
            "elbo_se": se(self.elbo),
            "reconstruction": float(np.mean(self.recon)),
            "kl": float(np.mean(self.kl)),
            "iwae_bounds": {str(k): float(np.mean(v)) for k, v in sorted(self.iwae.items())},
            "bits_per_dim": float(np.mean(diagnostics.bits_per_dim(self.log_px, self.data_dim))),
            "k": self.k,
            "n": n,
            "proposal": self.proposal,
            "ess_frac_mean": float(np.mean(self.ess_frac)),
            "khat_frac_gt_0_5": float(np.mean(khat > 0.5)) if khat_known else None,
            "khat_frac_gt_0_7": frac_bad,
            "khat_max": _finite(np.max(khat)) if khat_known else None,
            "khat_reason": khat_reason,
            "active_units": None if self.active_units is None else sum(self.active_units.values()),
            "active_units_by_site": self.active_units,
            "chunk_invariant": self.chunk_invariant,
            "reliable": reliable,
            "warning": warning,
        }


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------- proposals

def table_guide(loc: torch.Tensor, scale: torch.Tensor, site: str = "z") -> Callable:
    """q(site | x_i) = N(loc[i], diag(scale[i]²)) for a fixed [N, D] table, indexed by ``index``."""
    return MeanFieldGuide.from_moments({site: (loc, scale)}).requires_grad_(False)


def prior_guide(model: Callable) -> Callable:
    """The model's prior p(z) as the proposal (ancestral draws of the latent sites, the observed
    sites hidden): log p̂(x) = log mean_k p(x | z_k), a deliberately poor check."""
    return poutine.block(model, hide_fn=lambda msg: msg["is_observed"])


def proposal_guide(vae: VAE, proposal: Proposal, n: int) -> tuple[Callable, str, bool]:
    """(bound guide, name, whether it encodes new x) for ``proposal``: ``"guide"`` (the VAE's own),
    ``"prior"``, a guide program (e.g. a fitted :class:`~pyrovae.guides.MeanFieldGuide` over the
    evaluated rows), or a (loc, scale) pair of [N, D] tensors for a one-site model."""
    model, guide = vae.bound()
    if isinstance(proposal, str):
        if proposal == "guide":
            return guide, "guide", vae.can("amortized")
        if proposal == "prior":
            return prior_guide(model), "prior", False
        raise ValueError(f"unknown proposal {proposal!r}; use 'guide', 'prior', a guide, or a (loc, scale) pair")
    if isinstance(proposal, tuple):
        sites = latent_site_names(vae)
        if len(sites) != 1:
            raise ValueError(f"a (loc, scale) proposal needs a model with one latent site; this one has {sites}")
        loc, scale = (torch.as_tensor(t).to(device=vae.device, dtype=vae.dtype) for t in proposal)
        if loc.dim() != 2 or loc.shape[0] != n or scale.shape != loc.shape:
            raise ValueError(f"a (loc, scale) proposal must be two [{n}, latent_dim] tensors, one row per point; "
                             f"got {tuple(loc.shape)} and {tuple(scale.shape)}")
        proposal = table_guide(loc, scale, site=sites[0])
    return bind(proposal), "table", can(proposal, "amortized") and not can(proposal, "per_datapoint")


def latent_site_names(vae: VAE) -> list[str]:
    """The model's latent sites, as the check of the programs found them (estimators check first)."""
    return list(vae.info.latent) if vae.info is not None else ["z"]


# ---------------------------------------------------------------------------- estimator

def batch_log_weights(model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], index: torch.Tensor,
                      rows: range, k: int, chunk_size: int, seed: int, compile: bool, unsupported: set[str]
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All log w for ``batch``, as [K, batch] float64 on the CPU, drawn ``chunk_size`` particles
    at a time, and the means over the K draws of log p(x | z) and of log q(z | x) - log p(z)
    [batch]; ``index`` is what the guide gets (its rows), ``rows`` the points' global numbers,
    which seed their draws."""
    like = batch[0]
    # allocated once per batch: small per-chunk tensors kept alive between the decoder's large
    # buffers fragment the heap, and the process grew with K
    log_w = torch.empty(k, len(rows), dtype=torch.float64)
    log_lik_sum = torch.zeros(len(rows), dtype=torch.float64)
    log_ratio_sum = torch.zeros(len(rows), dtype=torch.float64)
    for start in range(0, k, chunk_size):
        interrupts.check()   # under an evaluation's StopFlag, a signal drops this batch here
        particles = range(start, min(start + chunk_size, k))
        noisy = with_noise(guide, seeded_noise(seed, IS_STREAM, particles, rows, like), unsupported)
        # validation checks (finite logits, binary x) rerun on every [chunk, batch, pixels]
        # tensor: once per batch suffices
        with pyro.validation_enabled(is_validation_enabled() and start == 0), FusedDensities(compile):
            terms = log_weights(model, noisy, len(particles), index, 1.0, *batch)
        log_w[particles.start: particles.stop] = terms.log_w
        for total, term in ((log_lik_sum, terms.log_lik), (log_ratio_sum, terms.log_q - terms.log_prior)):
            total += torch.as_tensor(term).detach().double().cpu().expand(len(particles), len(rows)).sum(0)
    return log_w, log_lik_sum / k, log_ratio_sum / k


def importance_batch(model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], index: torch.Tensor,
                     rows: range, k: int, chunk_size: int, seed: int, compile: bool, unsupported: set[str],
                     encodes: bool) -> dict[str, np.ndarray]:
    """Per-point values of one batch: log p̂ (= L_K), ESS / K, k-hat, the smaller L_k, the
    proposal's ELBO terms from the same K draws and (for an encoder) its means."""
    log_w, recon, kl = batch_log_weights(model, guide, batch, index, rows, k, chunk_size, seed, compile, unsupported)
    out = {"log_px": iwae_bound(log_w), "ess_frac": diagnostics.ess_fraction(log_w),
           "khat": torch.as_tensor(diagnostics.psis_khat(log_w.T)),
           **{f"iwae_{j}": grouped_iwae(log_w, j) for j in IWAE_KS if j < k}}
    del log_w   # the [K, batch] weights are needed only for k-hat and the L_k
    out.update(recon=recon, kl=kl)
    if encodes:
        out.update({f"mean__{site}": m for site, m in guide_means(guide, index, batch).items() if m is not None})
    return {name: value.detach().cpu().double().numpy() for name, value in out.items()}


def result_from_values(values: dict[str, np.ndarray], k: int, proposal: str, data_dim: int,
                       chunk_invariant: bool) -> LogLikelihoodResult:
    """A :class:`LogLikelihoodResult` from the per-point arrays of :func:`importance_batch`."""
    recon, kl = values["recon"], values["kl"]
    means = {key.split("__", 1)[1]: v for key, v in values.items() if key.startswith("mean__")}
    active = {site: diagnostics.active_units(torch.from_numpy(v)) for site, v in means.items()} or None
    iwae = {int(key.split("_")[1]): v for key, v in values.items() if key.startswith("iwae_")}
    return LogLikelihoodResult(
        k=k, proposal=proposal, data_dim=data_dim, log_px=values["log_px"], elbo=recon - kl, recon=recon, kl=kl,
        ess_frac=values["ess_frac"], khat=values["khat"], iwae={**iwae, k: values["log_px"]},
        active_units=active, chunk_invariant=chunk_invariant)


def grouped_iwae(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased estimate of L_k from K draws: the mean of L_k over the floor(K/k) disjoint
    groups of k consecutive draws; ``log_w`` is [K, batch]."""
    groups = log_w.shape[0] // k
    return iwae_bound(log_w[: groups * k].reshape(groups, k, -1), dim=1).mean(0)


class MeanValues(pyro.poutine.messenger.Messenger):
    """Each latent guide site takes its distribution's mean where it has one; the means are kept
    by site (None for a site without one). A site without a closed-form mean takes its centre
    (:func:`centre`), so neither the value nor the caller's global generator depends on a draw."""

    def __init__(self) -> None:
        super().__init__()
        self.means: dict[str, torch.Tensor | None] = {}

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        try:
            msg["value"] = msg["fn"].mean
            self.means[msg["name"]] = msg["value"]
        except NotImplementedError:
            self.means[msg["name"]] = None
            msg["value"] = centre(msg["fn"])


def centre(fn: torch.distributions.Distribution) -> torch.Tensor:
    """A value that stands for ``fn`` where it has no closed-form mean: for a flow, its base's
    mean pushed through the transforms; otherwise one draw, seeded apart from the caller's
    generator (CPU)."""
    if isinstance(fn, torch.distributions.TransformedDistribution):
        try:
            value = fn.base_dist.mean
        except NotImplementedError:
            value = None
        if value is not None:
            for transform in fn.transforms:   # through each transform's cache: log_prob needs no inverse
                value = transform(value)
            return value
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return fn.sample()


def guide_means(guide: Callable, index: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor | None]:
    """E_q[z_s | x] per latent site s of ``guide`` (None for a site without a closed-form mean)."""
    messenger = MeanValues()
    with messenger:
        guide(index, 1.0, *batch)
    return messenger.means


@torch.no_grad()
def estimate_log_likelihood(vae: VAE, data: Data, k: int = 5000, proposal: Proposal = "guide",
                            batch_size: int = BATCH_SIZE, chunk_size: int = CHUNK_SIZE, seed: int = 0,
                            progress: bool | Callable[[int, int], None] = False, compile: bool | None = None,
                            partial_path: str | Path | None = None, resume: bool = False,
                            options: dict | None = None) -> LogLikelihoodResult:
    """Estimate log p(x_i) for every row of ``data`` ([N, data_dim], or a tuple of row-first
    tensors for a model that takes more) with ``k`` importance samples.

    ``proposal``: ``"guide"`` (the VAE's own guide; with a per-datapoint guide the rows of
    ``data`` must be its rows), ``"prior"``, a guide program over the rows of ``data`` (e.g. a
    fitted table), or a (loc, scale) pair of [N, latent_dim] tensors. ``batch_size`` rows and
    ``chunk_size`` particles go through the decoder at once: memory grows with their product,
    not with ``k``. ``compile``: fuse the log densities with ``torch.compile``
    (:mod:`.kernels`); None compiles when there are at least ``COMPILE_PAIRS`` (point,
    particle) pairs. ``progress``: True for a bar on stderr, or a callable(points_done, total).
    ``partial_path``: where an interrupted run saves its finished points; ``resume`` continues
    from them (``options`` records what the points were computed with).
    """
    if k < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("k, batch_size and chunk_size must be positive")
    data = tuple(t.to(device=vae.device, dtype=vae.dtype if t.is_floating_point() else t.dtype)
                 for t in as_batch(data))
    n, data_dim = num_rows(data), vae.check(data).data_dim
    check_is_memory(vae, k, min(batch_size, n), min(chunk_size, k), data_dim)
    model, _ = vae.bound()
    guide, proposal_name, encodes = proposal_guide(vae, proposal, n)
    compile = n * k >= COMPILE_PAIRS if compile is None else compile
    unsupported: set[str] = set()
    pairs = [0]

    def evaluate(rows: range) -> dict[str, np.ndarray]:
        batch = rows_of(data, rows)
        index = torch.arange(rows.start, rows.stop, device=batch[0].device)
        values = importance_batch(model, guide, batch, index, rows, k, chunk_size, seed, compile, unsupported,
                                  encodes)
        pairs[0] += k * len(rows)
        if heap.tuned() and pairs[0] >= RELEASE_PAIRS:
            heap.release_free_memory()
            pairs[0] = 0
        return values

    options = {"method": "is", "k": k, "proposal": proposal_name, "seed": seed, "n": n, **(options or {})}
    path = Path(partial_path) if partial_path else None
    partial = Partial.load(path, n, options) if resume and path else Partial(n, options, path)
    report = _progress(progress, n)
    try:
        with vae.param_store():   # one scope of the param store for the whole run, not one per call
            values = run_batches(n, batch_size, evaluate, partial, report)
    finally:
        report.close()
    partial.discard()
    return result_from_values(values, k, proposal_name, data_dim, not unsupported)


def check_is_memory(vae: VAE, k: int, batch_size: int, chunk_size: int, data_dim: int) -> None:
    """Refuse, before any work, a K and batch whose buffers cannot fit: the [K, batch] float64 log
    weights (and PSIS's copies of them) and the networks' activations for batch x chunk pairs."""
    widths = sum(m.out_features for m in vae.modules() if isinstance(m, torch.nn.Linear))
    per_point = 4 * k * 8 + 3 * chunk_size * (widths + 2 * data_dim) * (torch.finfo(vae.dtype).bits // 8)
    have = available_memory(vae.device)
    if have is None or per_point * batch_size <= 0.8 * have:
        return
    fits = int(0.8 * have // per_point)
    fix = (f"pass {option('batch-size', fits)} or less" if fits >= 1 else
           f"pass a smaller {option('k')} (at most about {int(0.8 * have // 32):,} for one point at a time)")
    check_memory(per_point * batch_size, f"{option('k', k)} with {option('batch-size', batch_size)}", fix, vae.device)


class _progress:
    """``progress``: True for a bar on stderr (closed, also on an error, by ``close``), or a
    callable(done, total)."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int, desc: str = "log p(x)",
                 unit: str = "pt"):
        self.callback = progress if callable(progress) else None
        self.total, self.bar = total, None
        if progress is True and current().is_main:   # one bar for a distributed run: rank 0's
            self.bar = tqdm(total=total, unit=unit, desc=desc, leave=False, unit_scale=unit != "pt")

    def __call__(self, done: int) -> None:
        if self.callback:
            self.callback(done, self.total)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- output

def per_point_columns(result: LogLikelihoodResult) -> dict[str, np.ndarray]:
    """The per-datapoint values as named columns (iwae_<k> for each bound)."""
    columns = {"index": np.arange(result.n), "log_px": result.log_px, "elbo": result.elbo,
               "recon": result.recon, "kl": result.kl, "ess_frac": result.ess_frac, "khat": result.khat}
    columns.update({f"iwae_{k}": v for k, v in sorted(result.iwae.items())})
    return columns


def write_per_point(result, path: str | Path) -> Path:
    """Write ``result``'s per-datapoint columns to ``path`` (.csv or .npz), atomically."""
    path = Path(path)
    columns = result.columns() if hasattr(result, "columns") else per_point_columns(result)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise UsageError(f"per-point output must end in .csv or .npz, got {str(path)!r}")
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as file:  # a file object: np.savez would append .npz to a name
                np.savez(file, **columns)
        else:
            table = np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])
            fmt = ["%d"] + ["%.17g"] * (len(columns) - 1)
            np.savetxt(tmp, table, fmt=fmt, delimiter=",", header=",".join(columns), comments="")
    return path
