"""Importance-sampling estimate of the marginal likelihood log p(x) of a trained VAE.

For each datapoint x_i, draw K samples z_k ~ q(z | x_i) from a proposal and estimate

    log p̂(x_i) = log (1/K) Σ_k w_ik,    log w_ik = log p(x_i, z_k) - log q(z_k | x_i),

the K-sample importance-weighted bound L_K of Burda, Grosse & Salakhutdinov (2016),
"Importance Weighted Autoencoders" (their log-likelihood estimate uses K = 5000).
E[log p̂(x_i)] ≤ log p(x_i), with equality as K → ∞ when q covers the posterior; the gap
shrinks like Var(w) / (2 K E[w]²). From the same draws we report L_k for smaller k
(k = 1 is the ELBO), the ESS fraction and the PSIS Pareto k-hat of the weights (Yao et al.
2018; Vehtari et al. 2024): with k-hat > 0.7 the estimate is unreliable at any practical K.

The log weights come from Pyro traces (``objectives.log_weights``: the model replayed on
the proposal's samples, one weight per datapoint and particle), chunked over particles so the
decoder's buffers stay flat in K; only the [K, batch] log weights of one batch of points are kept.

Reproducibility: for Gaussian proposals the standard-normal noise of particle k and row i
comes from a tile of ``RNG_TILE`` (particles x rows) seeded by (seed, tile), so the draws,
and every result, are the same for any ``chunk_size`` and ``batch_size``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.messenger import Messenger

from . import diagnostics
from .fused import FusedDensities
from .heap import keep_freed_memory, release_free_memory
from .guides import AmortizedGuide
from .model import VAE, data_plate
from .objectives import elbo_terms, iwae_bound, log_weights
from .runs import atomic_path

BATCH_SIZE, CHUNK_SIZE = 200, 50   # datapoints x particles per decoder pass (benchmarks/bench_evaluate.py)
IWAE_KS = (1, 5, 50)        # bounds L_k reported besides L_K
KHAT_BAD = 0.7              # Vehtari et al. (2024): above it, IS estimates are unreliable
UNRELIABLE_SHARE = 0.05     # flag the estimate when more points than this have k-hat > KHAT_BAD
COMPILE_PAIRS = 1_000_000  # auto-compile from here: ~5 s of eager work vs 1 s of compiling (11 s the first time)
RELEASE_PAIRS = 1_000_000   # return the heap's free pages after this many (point, particle) pairs
RNG_TILE = (50, 25)         # particles x rows drawn from one seeded generator
_IS_STREAM, _ELBO_STREAM = 0, 1

Proposal = Union[str, tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LogLikelihoodResult:
    """Per-datapoint estimates (numpy float64 arrays of length N), in nats."""

    k: int
    proposal: str
    data_dim: int
    log_px: np.ndarray          # log p̂(x_i) with all K draws (= L_K)
    elbo: np.ndarray            # recon - kl of the proposal, analytic KL
    recon: np.ndarray           # E_q[log p(x_i | z)], one draw
    kl: np.ndarray              # KL(q(z | x_i) || p(z))
    ess_frac: np.ndarray        # ESS / K
    khat: np.ndarray            # PSIS Pareto k-hat
    iwae: dict[int, np.ndarray] = field(default_factory=dict)  # k -> L_k estimate per point
    active_units: int | None = None  # only for an amortized-guide proposal

    @property
    def n(self) -> int:
        return len(self.log_px)

    def summary(self) -> dict:
        """Means over the N points, their standard errors (std / sqrt(N)), and diagnostics. The
        ELBO, reconstruction and KL are those of the proposal q. JSON-safe: a value that is not
        finite (the SE of one point, k-hat without a tail) is None."""
        n = self.n
        se = lambda a: _finite(diagnostics.mean_and_se(a)[1])  # noqa: E731
        khat = np.where(np.isnan(self.khat), np.inf, self.khat)  # an unknown k-hat counts as a bad one
        frac_bad = float(np.mean(khat > KHAT_BAD))
        reliable = frac_bad <= UNRELIABLE_SHARE
        warning = None if reliable else (
            f"{frac_bad:.1%} of the {n} points have Pareto k-hat > {KHAT_BAD}: their importance weights "
            f"are heavy-tailed, so log p(x) is likely underestimated and its SE is not trustworthy. "
            f"More samples help little against heavy tails; use a proposal closer to the posterior "
            f"(e.g. `pyrovae evaluate --proposal fit`) or a better-trained guide.")
        return {
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
            "khat_frac_gt_0_5": float(np.mean(khat > 0.5)),
            "khat_frac_gt_0_7": frac_bad,
            "khat_max": _finite(np.max(khat)),
            "active_units": self.active_units,
            "reliable": reliable,
            "warning": warning,
        }


def _finite(value) -> float | None:
    return float(value) if np.isfinite(value) else None


# ---------------------------------------------------------------------------- proposals

def table_guide(loc: torch.Tensor, scale: torch.Tensor) -> Callable:
    """A Pyro guide q(z | x_i) = N(loc[i], diag(scale[i]²)) for a fixed [N, D] table, indexed by
    the data plate's row indices (``index``), with the model's signature."""
    def guide(x, index=None, beta=1.0, num_data=None):
        with data_plate(x, index, num_data) as rows:
            pyro.sample("z", dist.Normal(loc[rows], scale[rows]).to_event(1))
    return guide


def as_table(pair, n: int, latent_dim: int, like: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A (loc, scale) pair as two [n, latent_dim] tensors like ``like``; ``what`` names it in errors."""
    loc, scale = (torch.as_tensor(t).to(like) for t in pair)
    if loc.shape != (n, latent_dim) or scale.shape != loc.shape:
        raise ValueError(f"{what} (loc, scale) must both be [{n}, {latent_dim}], "
                         f"got {tuple(loc.shape)} and {tuple(scale.shape)}")
    return loc, scale


def prior_guide(vae: VAE) -> Callable:
    """The prior p(z) as the proposal: log p̂(x) = log mean_k p(x | z_k), a deliberately poor check."""
    def guide(x, index=None, beta=1.0, num_data=None):
        with data_plate(x, index, num_data):
            pyro.sample("z", vae.prior(x))
    return guide


def _proposal_guide(vae: VAE, proposal: Proposal, n: int, like: torch.Tensor) -> tuple[Callable, str]:
    if isinstance(proposal, str):
        if proposal == "guide":
            return vae.guide, "guide"
        if proposal == "prior":
            return prior_guide(vae), "prior"
        raise ValueError(f"unknown proposal {proposal!r}; use 'guide', 'prior' or a (loc, scale) pair")
    return table_guide(*as_table(proposal, n, vae.latent_dim, like, "proposal")), "table"


class _FixedNoise(Messenger):
    """Sets each latent Normal site (loc, scale) of the guide to loc + scale * eps for a given
    standard-normal eps [particles, batch, D], so the draws do not depend on how the particles
    and rows are chunked. Other sites sample as usual. Enter it inside the particle plate:
    the value is set before that plate broadcasts the distribution, which it still does."""

    def __init__(self, eps: torch.Tensor):
        super().__init__()
        self.eps = eps

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None:
            return
        base = getattr(msg["fn"], "base_dist", msg["fn"])
        if type(base) in (dist.Normal, torch.distributions.Normal) and base.loc.shape[-2:] == self.eps.shape[-2:]:
            msg["value"] = base.loc + base.scale * self.eps


def _with_noise(guide: Callable, eps: torch.Tensor) -> Callable:
    def noisy_guide(*args, **kwargs):
        with _FixedNoise(eps):
            return guide(*args, **kwargs)
    return noisy_guide


def _tile_seed(*ints: int) -> int:
    """A 63-bit seed from integers (splitmix64 folding), so neighbouring tiles are unrelated."""
    h = 0x9E3779B97F4A7C15
    for value in ints:
        h = (h ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 29)) >> 1


def _noise(seed: int, stream: int, particles: range, rows: range, dim: int, like: torch.Tensor) -> torch.Tensor:
    """Standard-normal eps [len(particles), len(rows), dim], a pure function of (seed, stream,
    particle, row): assembled from RNG_TILE tiles, each from its own seeded generator."""
    tp, tr = RNG_TILE
    p0, r0 = particles.start // tp, rows.start // tr
    generator = torch.Generator(device=like.device)
    tiles = [[torch.randn(tp, tr, dim, generator=generator.manual_seed(_tile_seed(seed, stream, p, r)),
                          device=like.device, dtype=like.dtype)
              for r in range(r0, (rows.stop - 1) // tr + 1)]
             for p in range(p0, (particles.stop - 1) // tp + 1)]
    eps = torch.cat([torch.cat(row, dim=1) for row in tiles], dim=0)
    return eps[particles.start - p0 * tp: particles.stop - p0 * tp, rows.start - r0 * tr: rows.stop - r0 * tr]


# ---------------------------------------------------------------------------- estimator

def _batch_log_weights(vae: VAE, guide: Callable, x: torch.Tensor, rows: range, num_data: int,
                       k: int, chunk_size: int, seed: int, compile: bool) -> torch.Tensor:
    """All log w for the rows x (= rows of the evaluated set), as [K, batch] float64 on the CPU,
    drawn ``chunk_size`` particles at a time."""
    index = torch.arange(rows.start, rows.stop, device=x.device)
    # allocated once per batch: small per-chunk tensors kept alive between the decoder's large
    # buffers fragment the heap, and the process grew with K
    log_w = torch.empty(k, len(rows), dtype=torch.float64)
    for start in range(0, k, chunk_size):
        particles = range(start, min(start + chunk_size, k))
        eps = _noise(seed, _IS_STREAM, particles, rows, vae.latent_dim, x)
        # validation checks (finite logits, binary x) rerun on every [chunk, batch, pixels]
        # tensor: once per batch suffices
        with pyro.validation_enabled(is_validation_enabled() and start == 0), FusedDensities(compile):
            terms = log_weights(vae.model, _with_noise(guide, eps), len(particles), x, index=index,
                                num_data=num_data)
        log_w[particles.start: particles.stop] = terms.log_w
    return log_w


def _grouped_iwae(log_w: torch.Tensor, k: int) -> torch.Tensor:
    """Unbiased estimate of L_k from K draws: the mean of L_k over the floor(K/k) disjoint
    groups of k consecutive draws; ``log_w`` is [K, batch]."""
    groups = log_w.shape[0] // k
    return iwae_bound(log_w[: groups * k].reshape(groups, k, -1), dim=1).mean(0)


@torch.no_grad()
def estimate_log_likelihood(vae: VAE, x: torch.Tensor, k: int = 5000, proposal: Proposal = "guide",
                            batch_size: int = BATCH_SIZE, chunk_size: int = CHUNK_SIZE, seed: int = 0,
                            progress: bool | Callable[[int, int], None] = False,
                            compile: bool | None = None) -> LogLikelihoodResult:
    """Estimate log p(x_i) for every row of ``x`` [N, data_dim] with ``k`` importance samples.

    ``proposal``: ``"guide"`` (the VAE's own guide; with a MeanFieldGuide the rows of ``x``
    must be its rows), ``"prior"``, or a (loc, scale) pair of [N, latent_dim] tensors: a diagonal
    Gaussian per row of ``x``. ``batch_size`` rows and ``chunk_size`` particles go through the
    decoder at once: memory grows with their product, not with ``k``. The default 10,000 pairs
    (31 MB per [pairs, 784] float32 buffer) amortize the per-chunk Python work and stay below
    glibc's 32 MB mmap threshold (:mod:`pyrovae.heap`), above which every buffer would be
    mapped and page-faulted anew each chunk. ``progress``: True
    for a bar on stderr, or a callable(points_done, points_total). ``compile``: fuse the log
    densities with ``torch.compile`` (:mod:`pyrovae.fused`); None (default) compiles when there
    are at least ``COMPILE_PAIRS`` (point, particle) pairs, where the seconds spent compiling pay off.
    """
    if k < 1 or batch_size < 1 or chunk_size < 1:
        raise ValueError("k, batch_size and chunk_size must be positive")
    like = next(vae.parameters())
    x = x.to(device=like.device, dtype=like.dtype)
    n, data_dim = x.shape
    guide, proposal_name = _proposal_guide(vae, proposal, n, x)
    encode = proposal_name == "guide" and isinstance(vae.guide_module, AmortizedGuide)
    iwae_ks = [j for j in IWAE_KS if j < k]
    if compile is None:
        compile = n * k >= COMPILE_PAIRS
    keep_freed_memory()
    pairs_since_release = 0
    pyro.set_rng_seed(seed)  # only non-Gaussian proposal sites draw from the global generator
    report = _progress(progress, n)
    out: dict[str, list] = {name: [] for name in ("log_px", "ess", "khat", "recon", "kl", "means", *map(str, iwae_ks))}
    for start in range(0, n, batch_size):
        rows = range(start, min(start + batch_size, n))
        xb = x[rows.start: rows.stop]
        log_w = _batch_log_weights(vae, guide, xb, rows, n, k, chunk_size, seed, compile)
        out["log_px"].append(iwae_bound(log_w))
        out["ess"].append(diagnostics.ess_fraction(log_w))
        out["khat"].append(torch.as_tensor(diagnostics.psis_khat(log_w.T)))
        for j in iwae_ks:
            out[str(j)].append(_grouped_iwae(log_w, j))
        del log_w  # the [K, batch] weights are needed only for k-hat and the L_k
        eps = _noise(seed, _ELBO_STREAM, range(1), rows, vae.latent_dim, xb)
        recon, kl = elbo_terms(vae.model, _with_noise(guide, eps), xb,
                               index=torch.arange(rows.start, rows.stop, device=x.device), num_data=n)
        out["recon"].append(recon.cpu())
        out["kl"].append(kl.cpu())
        if encode:
            out["means"].append(vae.guide_module(xb)[0].cpu())
        pairs_since_release += k * len(rows)
        if pairs_since_release >= RELEASE_PAIRS:
            release_free_memory()
            pairs_since_release = 0
        report(rows.stop)
    cat = {name: torch.cat(values).double().numpy() if values else None for name, values in out.items()}
    recon, kl = cat["recon"], cat["kl"]
    return LogLikelihoodResult(
        k=k, proposal=proposal_name, data_dim=data_dim, log_px=cat["log_px"], elbo=recon - kl, recon=recon,
        kl=kl, ess_frac=cat["ess"], khat=cat["khat"],
        iwae={**{j: cat[str(j)] for j in iwae_ks}, k: cat["log_px"]},
        active_units=diagnostics.active_units(torch.from_numpy(cat["means"])) if encode else None)


def _progress(progress: bool | Callable[[int, int], None], total: int) -> Callable[[int], None]:
    if callable(progress):
        return lambda done: progress(done, total)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="pt", desc="log p(x)", disable=not progress, leave=False)

    def update(done: int) -> None:
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


# ---------------------------------------------------------------------------- output

def per_point_columns(result: LogLikelihoodResult) -> dict[str, np.ndarray]:
    """The per-datapoint values as named columns (iwae_<k> for each bound)."""
    columns = {"index": np.arange(result.n), "log_px": result.log_px, "elbo": result.elbo,
               "recon": result.recon, "kl": result.kl, "ess_frac": result.ess_frac, "khat": result.khat}
    columns.update({f"iwae_{k}": v for k, v in sorted(result.iwae.items())})
    return columns


def write_per_point(result: LogLikelihoodResult, path: str | Path) -> Path:
    """Write the per-datapoint values to ``path`` (.csv or .npz), atomically."""
    path = Path(path)
    columns = per_point_columns(result)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise ValueError(f"per-point output must end in .csv or .npz, got {str(path)!r}")
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as file:  # a file object: np.savez would append .npz to a name
                np.savez(file, **columns)
        else:
            table = np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])
            fmt = ["%d"] + ["%.17g"] * (len(columns) - 1)
            np.savetxt(tmp, table, fmt=fmt, delimiter=",", header=",".join(columns), comments="")
    return path
