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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import pyro
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from ..core import heap, interrupts
from ..core.errors import option
from ..core.noise import forked_rng, seeded_noise, tile_seed, with_noise
from ..core.progress import Progress, Report
from ..core.programs import Data, num_rows, rows_of
from ..core.traces import iwae_bound, log_weights
from ..core.vae import VAE
from . import diagnostics
from .driver import Keep, available_memory, check_memory, evaluate_points
from .estimator import Estimate, Estimator, finite, standard_error, write_per_point
from .kernels import FusedDensities
from .proposals import Proposal, proposal_guide
from .settings import BATCH_SIZE, CHUNK_SIZE, COMPILE_PAIRS, ISSettings

log = logging.getLogger(__name__)

IWAE_KS = (1, 5, 50)        # bounds L_k reported besides L_K
KHAT_BAD = 0.7              # Vehtari et al. (2024): above it, IS estimates are unreliable
UNRELIABLE_SHARE = 0.05     # flag the estimate when more points than this have k-hat > KHAT_BAD
RELEASE_PAIRS = 1_000_000   # return the heap's free pages after this many (point, particle) pairs
IS_STREAM = 0

__all__ = ["ISSettings", "ImportanceSampling", "LogLikelihoodResult", "estimate_log_likelihood", "importance_batch",
           "per_point_columns", "write_per_point", "COMPILE_PAIRS", "BATCH_SIZE", "CHUNK_SIZE", "MeanValues"]


@dataclass(kw_only=True)
class LogLikelihoodResult(Estimate):
    """Per-datapoint IS estimates (numpy float64 arrays of length N), in nats."""

    method: ClassVar[str] = "is"
    k: int
    elbo: np.ndarray            # recon - kl of the proposal: the mean of log w over the K draws (= L_1)
    recon: np.ndarray           # E_q[log p(x_i | z)], the mean over the K draws
    kl: np.ndarray              # KL(q(z | x_i) || p(z)) = recon - elbo, from the same draws
    ess_frac: np.ndarray        # ESS / K
    khat: np.ndarray            # PSIS Pareto k-hat (NaN when K is too small to fit a tail)
    iwae: dict[int, np.ndarray] = field(default_factory=dict)  # k -> L_k estimate per point (L_K = log_px)
    active_units: dict[str, int] | None = None   # per latent site, for a guide with an encoder

    def advice(self, ais_option: str | None = None) -> str:
        """What to do about heavy-tailed weights, given the proposal already in use."""
        ais = f"annealed importance sampling ({ais_option or option('method', 'ais')})"
        if self.proposal == "guide":
            return (f"use a proposal closer to the posterior ({option('proposal', 'fit')}) or {ais}, which does "
                    "not rely on the proposal's tails")
        return f"the proposal is already fitted per point; use {ais}, which does not rely on the proposal's tails"

    def columns(self) -> dict[str, np.ndarray]:
        """index, log_px, the proposal's ELBO and its terms, ESS / K, k-hat, and iwae_<k> per bound."""
        return {**super().columns(), "elbo": self.elbo, "recon": self.recon, "kl": self.kl,
                "ess_frac": self.ess_frac, "khat": self.khat,
                **{f"iwae_{k}": v for k, v in sorted(self.iwae.items())}}

    def summary(self, ais_option: str | None = None) -> dict:
        """Means over the N points, their standard errors (std / sqrt(N)), and diagnostics. The
        ELBO, reconstruction and KL are those of the proposal q. JSON-safe: a value that is not
        finite (the SE of one point, k-hat without a tail) is None."""
        khat_known = bool(np.isfinite(self.khat).any() or np.isneginf(self.khat).any()) and \
            self.k >= diagnostics.MIN_KHAT_DRAWS
        khat = np.where(np.isnan(self.khat), np.inf, self.khat)   # an unknown k-hat counts as a bad one
        frac_bad = float(np.mean(khat > KHAT_BAD)) if khat_known else None
        reliable = None if frac_bad is None else frac_bad <= UNRELIABLE_SHARE
        warning = None
        if reliable is False:
            warning = (f"{frac_bad:.1%} of the {self.n} points have Pareto k-hat > {KHAT_BAD}: their importance "
                       f"weights are heavy-tailed, so log p(x) is likely underestimated and its SE is not "
                       f"trustworthy. More samples help little against heavy tails; {self.advice(ais_option)}.")
        khat_reason = None if khat_known else (
            f"k-hat needs at least {diagnostics.MIN_KHAT_DRAWS} draws per point to fit a tail; "
            f"K = {self.k}: pass {option('k')} {diagnostics.MIN_KHAT_DRAWS} or more")
        return {
            **super().summary(),
            "elbo": float(np.mean(self.elbo)),
            "elbo_se": standard_error(self.elbo),
            "reconstruction": float(np.mean(self.recon)),
            "kl": float(np.mean(self.kl)),
            # a list in increasing k: JSON keys "1", "1000", "5", "50" would sort as strings
            "iwae_bounds": [{"k": k, "bound": float(np.mean(v))} for k, v in sorted(self.iwae.items())],
            "k": self.k,
            "ess_frac_mean": float(np.mean(self.ess_frac)),
            "khat_frac_gt_0_5": float(np.mean(khat > 0.5)) if khat_known else None,
            "khat_frac_gt_0_7": frac_bad,
            "khat_max": finite(np.max(khat)) if khat_known else None,
            "khat_reason": khat_reason,
            "active_units": None if self.active_units is None else sum(self.active_units.values()),
            "active_units_by_site": self.active_units,
            "reliable": reliable,
            "warning": warning,
        }


def per_point_columns(result: Estimate) -> dict[str, np.ndarray]:
    """The per-datapoint values of ``result`` as named columns (:meth:`Estimate.columns`)."""
    return result.columns()


# ---------------------------------------------------------------------------- one batch

def batch_log_weights(model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range,
                      settings: ISSettings, *, index: torch.Tensor | None = None, unsupported: set[str] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All log w for ``batch``, as [K, batch] float64 on the CPU, drawn ``settings.chunk_size``
    particles at a time, and the means over the K draws of log p(x | z) and of log q(z | x) -
    log p(z) [batch]. ``rows`` are the points' global numbers, which seed their draws; ``index``
    is what the guide gets (its rows; default: ``rows``); the names of sites that could not draw
    from the seeded noise go to ``unsupported``."""
    like, k, chunk_size = batch[0], settings.k, settings.chunk_size
    index = torch.arange(rows.start, rows.stop, device=like.device) if index is None else index
    # allocated once per batch: small per-chunk tensors kept alive between the decoder's large
    # buffers fragment the heap, and the process grew with K
    log_w = torch.empty(k, len(rows), dtype=torch.float64)
    log_lik_sum = torch.zeros(len(rows), dtype=torch.float64)
    log_ratio_sum = torch.zeros(len(rows), dtype=torch.float64)
    # draws the seeded noise cannot give (a Dirichlet's, a Gamma's) come from torch's generator:
    # forked and seeded by the tile, so they repeat on resume and leave the caller's as it was
    with forked_rng(like.device, tile_seed(settings.seed, IS_STREAM, rows.start)):
        for start in range(0, k, chunk_size):
            interrupts.check()   # under an evaluation's StopFlag, a signal drops this batch here
            particles = range(start, min(start + chunk_size, k))
            noisy = with_noise(guide, seeded_noise(settings.seed, IS_STREAM, particles, rows, like), unsupported)
            # validation checks (finite logits, binary x) rerun on every [chunk, batch, pixels]
            # tensor: once per batch suffices
            with pyro.validation_enabled(is_validation_enabled() and start == 0), FusedDensities(settings.compile):
                terms = log_weights(model, noisy, len(particles), index, 1.0, *batch)
            log_w[particles.start: particles.stop] = terms.log_w
            for total, term in ((log_lik_sum, terms.log_lik), (log_ratio_sum, terms.log_q - terms.log_prior)):
                total += torch.as_tensor(term).detach().double().cpu().expand(len(particles), len(rows)).sum(0)
    return log_w, log_lik_sum / k, log_ratio_sum / k


def importance_batch(model: Callable, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range,
                     settings: ISSettings, *, index: torch.Tensor | None = None, encodes: bool = False,
                     unsupported: set[str] | None = None) -> dict[str, np.ndarray]:
    """Per-point values of one batch (see :func:`batch_log_weights`): log p̂ (= L_K), ESS / K,
    k-hat, the smaller L_k, the proposal's ELBO terms from the same K draws and (``encodes``: a
    guide with an encoder) its means."""
    log_w, recon, kl = batch_log_weights(model, guide, batch, rows, settings, index=index, unsupported=unsupported)
    k = settings.k
    out = {"log_px": iwae_bound(log_w), "ess_frac": diagnostics.ess_fraction(log_w),
           "khat": torch.as_tensor(diagnostics.psis_khat(log_w.T)),
           **{f"iwae_{j}": grouped_iwae(log_w, j) for j in IWAE_KS if j < k}}
    del log_w   # the [K, batch] weights are needed only for k-hat and the L_k
    out.update(recon=recon, kl=kl)
    if encodes:
        index = torch.arange(rows.start, rows.stop, device=batch[0].device) if index is None else index
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
    with forked_rng(seed=0):
        return fn.sample()


def guide_means(guide: Callable, index: torch.Tensor, batch: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor | None]:
    """E_q[z_s | x] per latent site s of ``guide`` (None for a site without a closed-form mean)."""
    messenger = MeanValues()
    with messenger:
        guide(index, 1.0, *batch)
    return messenger.means


# ---------------------------------------------------------------------------- the estimator

class ImportanceSampling(Estimator):
    """log p̂(x_i) = log (1/K) Σ_k w_ik with K draws from a proposal (module docstring), for every
    row of the data, batch by batch; ``ImportanceSampling(k=5000)`` or ``ImportanceSampling(ISSettings(...))``."""

    settings_class = ISSettings

    @torch.no_grad()
    def estimate(self, vae: VAE, data: Data, proposal: Proposal = "guide", *, progress: Report = False,
                 keep: Keep = Keep()) -> LogLikelihoodResult:
        """log p̂(x_i) for every row of ``data`` ([N, data_dim], or a tuple of row-first tensors
        for a model that takes more).

        ``proposal``: ``"guide"`` (the VAE's own guide; with a per-datapoint guide the rows of
        ``data`` must be its rows), ``"prior"``, a guide program over the rows of ``data`` (e.g. a
        fitted table), or a (loc, scale) pair of [N, latent_dim] tensors. ``progress``: True for
        a bar on stderr, or a callable(points_done, total). ``keep``: where an interrupted run
        saves its finished points, and whether to resume from them."""
        data = vae.as_batch(data)
        n, data_dim = num_rows(data), vae.check(data).data_dim
        settings = self.settings.but(compile=self.settings.compiles(n * self.settings.k))
        model = vae.bound()[0]
        guide, name, encodes = proposal_guide(vae, proposal, n)
        activations = activations_per_pair(vae, model, guide, data) + 2 * data_dim
        settings = settings.but(batch_size=is_batch_size(vae, settings, n, activations))
        unsupported: set[str] = set()
        pairs = 0   # (point, particle) pairs since the heap last returned its free pages

        def evaluate(rows: range) -> dict[str, np.ndarray]:
            nonlocal pairs
            values = importance_batch(model, guide, rows_of(data, rows), rows, settings, encodes=encodes,
                                      unsupported=unsupported)
            pairs += settings.k * len(rows)
            if heap.tuned() and pairs >= RELEASE_PAIRS:
                heap.release_free_memory()
                pairs = 0
            return values

        options = {"method": "is", "k": settings.k, "proposal": name, "seed": settings.seed, "n": n}
        with Progress(progress, n, "log p(x)") as report:
            values = evaluate_points(vae, keep.open(n, options), settings.batch_size, evaluate, report)
        return result_from_values(values, settings.k, name, data_dim, not unsupported)

    @torch.no_grad()
    def batch(self, vae: VAE, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, *,
              index: torch.Tensor | None = None, unsupported: set | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        return importance_batch(vae.bound()[0], guide, batch, rows, self.settings, index=index, unsupported=unsupported)


def estimate_log_likelihood(vae: VAE, data: Data, *, proposal: Proposal = "guide", progress: Report = False,
                            partial_path: str | Path | None = None, resume: bool = False, options: dict | None = None,
                            **settings) -> LogLikelihoodResult:
    """:meth:`ImportanceSampling.estimate` with the settings as keywords (:class:`ISSettings`:
    ``k``, ``batch_size``, ``chunk_size``, ``seed``, ``compile``): log p̂(x_i) for every row of
    ``data`` with ``k`` importance samples from ``proposal``. ``compile``: fuse the log densities
    with ``torch.compile`` (:mod:`.kernels`); None compiles from ``COMPILE_PAIRS`` (point,
    particle) pairs on. ``partial_path``: where an interrupted run saves its finished points;
    ``resume`` continues from them (``options`` records what else the points depend on)."""
    return ImportanceSampling(**settings).estimate(vae, data, proposal, progress=progress,
                                                   keep=Keep(partial_path, resume, options or {}))


def activations_per_pair(vae: VAE, model: Callable, guide: Callable, data: tuple[torch.Tensor, ...]) -> int:
    """Numbers the networks' layers output for one (point, particle) pair: counted by forward
    hooks on every leaf module during one draw for the first row (a conv layer's C x H x W, a
    linear layer's width: what the layers' shapes alone would not say)."""
    counted = 0

    def count(module: torch.nn.Module, inputs, output) -> None:
        nonlocal counted
        counted += sum(t.numel() for t in (output if isinstance(output, (tuple, list)) else (output,))
                        if isinstance(t, torch.Tensor))

    leaves = [m for m in vae.modules() if next(m.children(), None) is None]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad(), pyro.validation_enabled(False), vae.param_store(), forked_rng(data[0].device):
            log_weights(model, guide, 1, torch.zeros(1, dtype=torch.long, device=data[0].device), 1.0,
                        *rows_of(data, range(1)))
    finally:
        for hook in hooks:
            hook.remove()
    return counted


def is_batch_size(vae: VAE, settings: ISSettings, n: int, activations: int) -> int:
    """The points per pass IS runs with: ``settings.batch_size``, refused before any work when its
    buffers cannot fit; or, where it is None, :data:`~.settings.BATCH_SIZE` points or as many as
    fit (a VampPrior's prior, a mixture over its pseudo-inputs, costs hundreds of numbers per
    pair). The buffers: the [K, batch] float64 log weights (and PSIS's copies of them) and
    ``activations`` numbers per (point, particle) pair (the layers', :func:`activations_per_pair`,
    and copies of x) for batch x chunk pairs. The estimates do not depend on it (module docstring)."""
    k, chunk_size = settings.k, min(settings.chunk_size, settings.k)
    per_point = 4 * k * 8 + 3 * chunk_size * activations * (torch.finfo(vae.dtype).bits // 8)
    have = available_memory(vae.device)
    wanted = min(settings.batch_size or BATCH_SIZE, n)
    fits = wanted if have is None else int(0.8 * have // per_point)
    if fits >= wanted:
        return wanted
    if settings.batch_size is None and fits >= 1:
        log.info(f"IS: {fits} points per pass ({wanted} would need about {per_point * wanted / 1e9:.3g} GB of the "
                 f"{have / 1e9:.3g} GB available)")
        return fits
    fix = (f"pass {option('batch-size', fits)} or less" if fits >= 1 else
           f"pass a smaller {option('k')} (at most about {int(0.8 * have // 32):,} for one point at a time)")
    check_memory(per_point * wanted, f"{option('k', k)} with {option('batch-size', wanted)}", fix, vae.device)
    return wanted
