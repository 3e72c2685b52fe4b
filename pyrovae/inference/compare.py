"""Where the ELBO loses to log p(x): amortization vs approximation (Cremer, Li & Duvenaud 2018,
"Inference Suboptimality in Variational Autoencoders").

For each evaluated x_i, with the model frozen:

    L[q]    the ELBO of the run's own q: the encoder's q_φ(z | x_i) (an amortized guide, Gaussian
            or flow), or the trained rows of a per-datapoint guide (training points)
    L[q*]   the ELBO of the best member of the guide's per-point family, fitted per point
            (:mod:`.local_fit`: diagonal Gaussians, or per-point flows for a flow guide)
    log p̂   importance sampling with q* as the proposal, K draws (:mod:`pyrovae.evaluation.importance`)

    amortization gap  = L[q*] - L[q]       (the encoder's share: q is an encoder's)
    optimization gap  = L[q*] - L[q]       (the same difference when q is a per-datapoint guide's
                                            trained rows: what SVI left unconverged, not amortization)
    approximation gap = log p̂ - L[q*]      (the family's share)
    inference gap     = log p̂ - L[q]       = amortization (or optimization) gap + approximation gap

q* is the better, per point, of two fits: one started at N(0, I) and one started at q (for
amortized runs, the encoder: semi-amortized refinement, Kim et al. 2018). The choice uses the
fits' own ELBO estimates; the reported L[q*] is re-estimated with fresh draws, so picking the
max does not bias it upward. For points without a trained q (test points of a per-datapoint
guide), q is the fit from N(0, I) itself, so the optimization gap is 0 by construction.
``optimized_from_prior_frac`` is the share of points whose q* is the fit from N(0, I);
``steps`` the most Adam steps a batch's fit took, by start (``from_prior``, ``from_q``,
``refined``); ``q_star_family`` the per-point family q* is fitted in (``MeanFieldGuide``, a
diagonal Gaussian per point, for every Gaussian guide, amortized ones too).

Every ELBO uses the closed-form KL where exact and ``eval_samples`` reconstruction draws.
Standard errors are std / sqrt(n) of the per-point values (of the per-point differences, for
the gaps): the spread over the evaluated points, which also contains the Monte Carlo noise.
log p̂ ≤ log p in expectation, so the approximation gap is, if anything, underestimated.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..core import interrupts
from ..core.errors import option
from ..core.noise import forked_rng, tile_seed
from ..core.options import option as setting
from ..core.progress import Progress, Report
from ..core.programs import Data, bind, num_rows, rows_of
from ..core.vae import VAE
from ..evaluation import diagnostics
from ..evaluation.ais import AnnealedImportanceSampling
from ..evaluation.driver import Keep, evaluate_points
from ..evaluation.estimator import Estimator
from ..evaluation.importance import ImportanceSampling, result_from_values
from ..evaluation.settings import AISSettings, ISSettings, Settings, same, whole
from ..guides.rows import select_rows
from .local_fit import LocalFitSettings, elbo_per_point, fit_local

DEFAULT_REFINE_STEPS = 20   # Kim et al. (2018) refine the encoder's q with ~20 SVI steps
BATCH_SIZE = 250            # points fitted together: a unit of work an interrupt keeps


@dataclass(frozen=True, kw_only=True)
class CompareSettings(Settings):
    """The comparison's: the test-time fit of q* (at most ``steps`` Adam steps at ``lr``, the
    stopping rule's ``tol``), the fixed budget ``refine_steps`` of the semi-amortized refinement,
    ``eval_samples`` draws per ELBO, and log p̂ from q* by importance sampling (``k`` draws) or by
    AIS (``ais_steps``, ``chains``, ``leapfrog``); ``batch_size`` points at a time, each batch
    seeded by ``seed`` and its first row."""

    log_px: str = setting("is", "log p(x) by importance sampling from q* (--k), or by AIS from q* as Cremer et al. "
                                "(2018) did (--ais-steps, --chains, --leapfrog).", choices=("is", "ais"))
    k: int = same(ISSettings, "k", help="Importance samples per point for log p(x).")
    ais_steps: int = same(AISSettings, "steps", help="AIS: intermediate distributions.")
    chains: int = same(AISSettings, "chains", help="AIS: chains per point.")
    leapfrog: int = same(AISSettings, "leapfrog", help="AIS: leapfrog steps per transition.")
    steps: int = same(LocalFitSettings, "max_steps", help="Most Adam steps of the test-time fit of q*.",
                      check=whole(1))
    lr: float = same(LocalFitSettings, "lr", help="Adam learning rate of the test-time fit.")
    refine_steps: int = setting(DEFAULT_REFINE_STEPS, "Steps of semi-amortized refinement from the encoder (0: skip).",
                                check=whole(0))
    tol: float | None = same(LocalFitSettings, "tol", cli=False)
    eval_samples: int = same(LocalFitSettings, "eval_samples", help="Reconstruction draws per ELBO estimate.")
    batch_size: int = setting(BATCH_SIZE, "Points fitted together; also what an interrupt keeps (finished batches).",
                              check=whole(1))
    seed: int = setting(0, "Seeds the fits and every draw.", check=whole())

    def fit(self, **changes: Any) -> LocalFitSettings:
        """The test-time fit's settings (``changes``: e.g. its seed)."""
        return LocalFitSettings(max_steps=self.steps, lr=self.lr, tol=self.tol, eval_samples=self.eval_samples,
                                **changes)

    def log_likelihood(self) -> Estimator:
        """The estimator of log p̂ from q*: IS or AIS, seeded by ``seed``, never compiled."""
        if self.log_px == "ais":
            # q* is fitted anew for every batch, so no tuning round ahead of the comparison can fix the
            # kernels: the chains adapt their step sizes as they run, as Cremer et al.'s (and Wu et
            # al.'s) AIS did (without, ais_batch has no step sizes at all)
            return AnnealedImportanceSampling(steps=self.ais_steps, chains=self.chains, leapfrog=self.leapfrog,
                                              is_k=0, seed=self.seed, compile=False, adapt_step_size=True)
        return ImportanceSampling(k=self.k, seed=self.seed, compile=False)


class Comparison(Estimator):
    """The gaps of Cremer et al. (2018) (module docstring) for the rows of the data:
    ``Comparison(k=5000, steps=3000).compare(run, x)``."""

    settings_class = CompareSettings

    def compare(self, run: Any, data: Data, *, index: torch.Tensor | None = None, progress: Report = False,
                keep: Keep = Keep()) -> dict:
        """The table of the gaps, means and SEs in nats. ``run``: a
        :class:`~pyrovae.workflows.Run` or a :class:`~pyrovae.core.vae.VAE`. ``index``: for a
        per-datapoint guide, the rows of its trained tables that ``data`` holds (training points);
        without it the points have no trained q. An interrupted comparison saves its finished
        batches where ``keep`` says, and resuming gives the numbers of an uninterrupted run."""
        vae: VAE = getattr(run, "vae", run)
        data = vae.as_batch(data)
        n, settings = num_rows(data), self.settings
        batches = _Batches(vae, data, index, settings)
        with Progress(progress, n, "compare") as report:
            values = evaluate_points(vae, keep.open(n, {"command": "compare", **settings.as_dict(), "n": n}),
                                     settings.batch_size, batches.evaluate, report)
        return batches.table(values)


def compare_inference(run: Any, data: Data, *, index: torch.Tensor | None = None, progress: Report = False,
                      partial_path: str | Path | None = None, resume: bool = False, options: dict | None = None,
                      **settings) -> dict:
    """:meth:`Comparison.compare` with the settings as keywords (:class:`CompareSettings`: ``k``,
    ``steps``, ``lr``, ``refine_steps``, ``tol``, ``eval_samples``, ``batch_size``, ``seed``,
    ``log_px``, ``ais_steps``, ``chains``, ``leapfrog``); ``partial_path``, ``resume`` and
    ``options`` as for :func:`~pyrovae.evaluation.importance.estimate_log_likelihood`."""
    return Comparison(**settings).compare(run, data, index=index, progress=progress,
                                          keep=Keep(partial_path, resume, options or {}))


class _Batches:
    """The work of one comparison, batch by batch: the fits, the ELBOs and log p̂, and the seconds
    each took; then the table."""

    def __init__(self, vae: VAE, data: tuple[torch.Tensor, ...], index: torch.Tensor | None,
                 settings: CompareSettings):
        self.vae, self.data, self.index, self.settings = vae, data, index, settings
        self.amortized = vae.can("amortized")
        self.has_q = self.amortized or index is not None
        self.log_likelihood = settings.log_likelihood()
        self.unsupported: set[str] = set()
        self.seconds: dict[str, float] = {}
        self.family: str | None = None   # the per-point family of q*, e.g. MeanFieldGuide or PerPointFlowGuide

    def timed(self, name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        return result

    def fits(self, batch: tuple[torch.Tensor, ...], rows_index: torch.Tensor | None, seed: int) -> dict:
        """The fits of one batch: from N(0, I), from q (a trained q), and the refinement of the
        encoder's q (a fixed budget, no stopping rule)."""
        vae, settings = self.vae, self.settings
        fit = settings.fit(batch_size=num_rows(batch))
        fits = {"from_prior": self.timed("from_prior", lambda: fit_local(vae, batch, "prior",
                                                                         settings=fit.but(seed=seed)))}
        if self.has_q:
            fits["from_q"] = self.timed("from_q", lambda: fit_local(vae, batch, "q", index=rows_index,
                                                                    settings=fit.but(seed=seed + 1)))
        if self.amortized and settings.refine_steps > 0:
            fits["refined"] = self.timed("refined", lambda: fit_local(
                vae, batch, "q", settings=fit.but(max_steps=settings.refine_steps, tol=None, seed=seed + 2)))
        return fits

    def evaluate(self, rows: range) -> dict[str, np.ndarray]:
        """Per point of the batch: L[q], L[q*] (re-estimated on fresh draws), L[q refined], log p̂
        from q*, which fit q* is, and the steps the fits took."""
        vae, settings = self.vae, self.settings
        batch = rows_of(self.data, rows)
        rows_index = None if self.index is None else self.index[rows.start:rows.stop]
        batch_seed = tile_seed(settings.seed, rows.start)
        fits = self.fits(batch, rows_index, batch_seed)
        # q* per point: the better fit by its own estimate; its ELBO re-estimated on fresh draws
        best, use_prior_fit = fits["from_prior"].guide, torch.ones(len(rows), dtype=torch.bool)
        if "from_q" in fits:
            use_prior_fit = fits["from_prior"].elbo >= fits["from_q"].elbo
            best = select_rows(use_prior_fit, fits["from_prior"].guide, fits["from_q"].guide)
        with forked_rng(vae.device, batch_seed + 3):
            elbo_star = elbo_per_point(vae, batch, best, settings.eval_samples)
            elbo_q = (elbo_per_point(vae, batch, vae.guide, settings.eval_samples, index=rows_index) if self.has_q
                      else elbo_star)
        self.family = type(best).__name__
        values = self.timed("log_likelihood", lambda: self.log_px(bind(best), batch, rows))
        steps = {f"steps_{name}": torch.full((len(rows),), float(max(fit.steps))) for name, fit in fits.items()}
        values.update(elbo_q=elbo_q, elbo_optimized=elbo_star, use_prior_fit=use_prior_fit.float(), **steps)
        if "refined" in fits:
            values["elbo_refined"] = fits["refined"].elbo
        return {name: torch.as_tensor(v).detach().cpu().double().numpy() if not isinstance(v, np.ndarray) else v
                for name, v in values.items()}

    def log_px(self, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range) -> dict[str, np.ndarray]:
        """log p̂ of the batch from q* (a guide over its rows): IS, or AIS (a signal drops the batch at
        its next transition)."""
        local = torch.arange(len(rows), device=batch[0].device)
        return self.log_likelihood.batch(self.vae, guide, batch, rows, index=local, unsupported=self.unsupported,
                                         progress=_check)

    def table(self, values: dict[str, np.ndarray]) -> dict:
        """Means and SEs of the per-point values and gaps, with the diagnostics of log p̂."""
        settings, n = self.settings, len(values["log_px"])
        log_px_hat, elbo_star, elbo_q = (torch.from_numpy(values[key])
                                         for key in ("log_px", "elbo_optimized", "elbo_q"))
        per_point = {
            "log_likelihood": log_px_hat,
            "elbo_q": elbo_q,
            "elbo_optimized": elbo_star,
            gap_name(self.amortized): elbo_star - elbo_q,
            "approximation_gap": log_px_hat - elbo_star,
            "inference_gap": log_px_hat - elbo_q,
        }
        if "elbo_refined" in values:
            per_point["elbo_refined"] = torch.from_numpy(values["elbo_refined"])
        q_name = ("encoder" if self.amortized else "trained rows" if self.has_q else
                  "test-time fit (no trained parameters)")
        table: dict[str, Any] = {"n": n, "q": q_name, "log_px": settings.log_px, "q_star_family": self.family,
                                 **({"k": settings.k} if settings.log_px == "is" else
                                    {"ais_steps": settings.ais_steps, "chains": settings.chains,
                                     "leapfrog": settings.leapfrog})}
        for name, column in per_point.items():
            table[name], table[f"{name}_se"] = diagnostics.mean_and_se(column)
        table.update({
            "optimized_from_prior_frac": float(values["use_prior_fit"].mean()),
            "steps": {key[len("steps_"):]: int(values[key].max()) for key in values if key.startswith("steps_")},
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
            "chunk_invariant": not self.unsupported,
        })
        if settings.log_px == "is":
            summary = result_from_values(values, settings.k, "fit", self.vae.check(self.data).data_dim,
                                         not self.unsupported).summary(ais_option=option("log-px", "ais"))
            table.update({key: summary[key] for key in ("khat_frac_gt_0_7", "reliable", "warning")})
        else:
            table.update({"accept_rate_mean": float(values["accept_rate"].mean()),
                          "chain_ess_frac_mean": float(values["chain_ess"].mean()), "warning": None})
        return table


def gap_name(amortized: bool) -> str:
    """L[q*] - L[q]: the amortization gap when q is an encoder's; otherwise (a per-datapoint
    guide's trained rows, or the test-time fit) the optimization gap, what SVI left unconverged."""
    return "amortization_gap" if amortized else "optimization_gap"


def _check(t: int, total: int) -> None:
    interrupts.check()   # a signal drops the batch under way at once: the finished ones are kept


ROWS = [("log p̂(x)", "log_likelihood"), ("L[q]", "elbo_q"), ("L[q refined]", "elbo_refined"),
        ("L[q*]", "elbo_optimized"), ("amortization gap", "amortization_gap"), ("optimization gap", "optimization_gap"),
        ("approximation gap", "approximation_gap"), ("inference gap", "inference_gap")]


def format_table(table: dict, title: str = "") -> str:
    """A readable table of one comparison: value ± SE, in nats."""
    how = f"K = {table['k']}" if table.get("log_px", "is") == "is" else f"AIS T = {table['ais_steps']}"
    lines = [f"{title}  (n = {table['n']}, q = {table['q']}, {how})".strip()]
    for label, key in ROWS:
        if key in table:
            lines.append(f"  {label:<18} {table[key]:>10.3f} ± {table[key + '_se']:.3f}")
    lines.append("  steps " + ", ".join(f"{name} {value}" for name, value in table["steps"].items()))
    if table.get("warning"):
        lines.append(f"  warning: {table['warning']}")
    return "\n".join(lines)
