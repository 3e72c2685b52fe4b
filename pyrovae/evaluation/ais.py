"""log p(x) by annealed importance sampling from Pyro traces, and the BDMC sandwich.

For each datapoint x, C chains anneal from a start density q(z | x) (the guide, a per-point fit,
or the prior) to the posterior p(z | x) ∝ p(x, z) along f_t ∝ q^(1-β_t) p(x, ·)^(β_t) with HMC
transitions (:mod:`.annealing`), and

    log p̂(x) = log (1/C) Σ_c w_c,     log w_c = Σ_t (β_t - β_{t-1}) [log p(x, z_c,t-1) - log q(z_c,t-1 | x)],

a stochastic lower bound of log p(x) that tightens as T grows (Neal 2001; Wu, Burda,
Salakhutdinov & Grosse 2017 evaluate decoder-based models this way). The chains, their
coordinates (a flow's base space, an unconstrained space for constrained supports) and their
densities from Pyro traces are :mod:`.chains`'; the seeded draws make a point's estimate
independent of its batchmates, the batch size, a resumed run and the process evaluating it.

BDMC (Grosse, Ghahramani & Adams 2015): for (z, x) drawn from the model, z is an exact posterior
sample of x, and AIS with the schedule reversed, started at z, gives E[w_rev] = 1 / p(x): its
-log p̂_rev is a stochastic upper bound, forward AIS a lower one, and the gap between them bounds
the error of forward AIS on such data: a user reads from it how many steps an evaluation needs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import torch
from pyro import poutine

from ..core import interrupts
from ..core.distributed import current
from ..core.errors import option
from ..core.noise import forked_rng
from ..core.progress import Progress, Report
from ..core.programs import Data, num_rows, rows_of
from ..core.traces import sample_sites, unconditioned_observation
from ..core.vae import VAE
from . import diagnostics
from .chains import ais_batch
from .driver import EvaluationInterrupted, Keep, Partial, evaluate_points, fingerprint
from .estimator import Estimate, Estimator, standard_error
from .importance import importance_batch
from .proposals import Proposal, proposal_guide
from .settings import CHAINS, IS_K, LEAPFROG, PAIRS, STEPS, AISSettings, BDMCSettings

__all__ = ["AISSettings", "AnnealedImportanceSampling", "AISResult", "estimate_log_likelihood_ais", "tune_step_sizes",
           "BDMCSettings",
           "BDMC", "BDMCResult", "bdmc", "simulate", "STEPS", "CHAINS", "LEAPFROG", "IS_K", "PAIRS"]


# ---------------------------------------------------------------------------- AIS

@dataclass(kw_only=True)
class AISResult(Estimate):
    """Per-datapoint AIS estimates (numpy float64, length N; ``log_px`` = log mean_c w_c), in nats,
    and what they were made with."""

    method: ClassVar[str] = "ais"
    steps: int
    chains: int
    leapfrog: int
    log_w: np.ndarray            # [N, C] the chains' log weights
    accept_rate: np.ndarray      # mean Metropolis acceptance probability over transitions and chains
    step_size: np.ndarray        # final HMC step size, mean over chains
    chain_ess: np.ndarray        # (Σ w)² / Σ w² / C: 1 when the chains agree
    khat: np.ndarray | None = None          # PSIS k-hat across chains, when C allows
    reference: dict = field(default_factory=dict)   # ELBO and IS estimate of the same points
    step_sizes: tuple[float, ...] | None = None     # per temperature, fixed before the run (None: adapted in it)
    tune_points: int = 0                            # points of the round that tuned them

    def columns(self) -> dict[str, np.ndarray]:
        """index, log_px, acceptance, step size, the chains' ESS, k-hat, the reference IS estimate
        and ELBO, and each chain's log weight (log_w_<c>)."""
        columns = {**super().columns(), "accept_rate": self.accept_rate, "step_size": self.step_size,
                   "chain_ess": self.chain_ess}
        if self.khat is not None:
            columns["khat"] = self.khat
        columns.update({key: value for key, value in self.reference.items() if isinstance(value, np.ndarray)})
        columns.update({f"log_w_{c}": self.log_w[:, c] for c in range(self.log_w.shape[1])})
        return columns

    def summary(self) -> dict:
        """Means over the points with their standard errors, the HMC diagnostics, and the reference
        IS estimate and ELBO of the same points (with ``ais_minus_is``)."""
        out = {
            **super().summary(),
            "steps": self.steps, "chains": self.chains, "leapfrog": self.leapfrog,
            "accept_rate_mean": float(np.mean(self.accept_rate)),
            "step_size": {"median": float(np.median(self.step_size)), "min": float(np.min(self.step_size)),
                          "max": float(np.max(self.step_size))},
            "chain_ess_frac_mean": float(np.mean(self.chain_ess)),
            **kernel_summary(self.step_sizes, self.tune_points),
            "khat_frac_gt_0_7": None if self.khat is None else float(np.mean(self.khat > 0.7)),
            "khat_reason": None if self.khat is not None else (
                f"k-hat across chains needs at least {diagnostics.MIN_KHAT_DRAWS} chains; "
                f"{option('chains', self.chains)}"),
        }
        for key in ("elbo", "is_log_likelihood"):
            if key in self.reference:
                out[key] = float(np.mean(self.reference[key]))
                out[f"{key}_se"] = standard_error(self.reference[key])
        if "is_log_likelihood" in self.reference:
            out["is_k"] = self.reference["is_k"]
            out["ais_minus_is"] = float(np.mean(self.log_px - self.reference["is_log_likelihood"]))
        return out


class AnnealedImportanceSampling(Estimator):
    """log p̂(x_i) = log (1/C) Σ_c w_c over C chains annealed from the proposal to the posterior
    (module docstring), for every row of the data, batch by batch; ``AnnealedImportanceSampling(steps=100)``
    or ``AnnealedImportanceSampling(AISSettings(...))``. Costs about steps x leapfrog x chains
    decoder passes, forward and backward, per point."""

    settings_class = AISSettings

    @torch.no_grad()
    def estimate(self, vae: VAE, data: Data, proposal: Proposal = "guide", *, progress: Report = False,
                 keep: Keep = Keep()) -> AISResult:
        """log p̂(x_i) for every row of ``data``; ``proposal``, ``progress`` (per transition) and
        ``keep`` as for :meth:`~.importance.ImportanceSampling.estimate`."""
        data = vae.as_batch(data)
        n, data_dim = num_rows(data), vae.check(data, continuous=True).data_dim
        settings = self.settings.but(compile=self.settings.compiles(self.settings.passes(n)))
        guide, name, _ = proposal_guide(vae, proposal, n)
        unsupported: set[str] = set()
        partial = keep.open(n, {"method": "ais", "steps": settings.steps, "chains": settings.chains,
                                "leapfrog": settings.leapfrog, "proposal": name, "seed": settings.seed, "n": n,
                                "is_k": settings.is_k, **kernel_options(settings)})
        settings = tuned(vae, guide, data, settings, partial, progress)
        report = Progress(progress, n * settings.steps, "AIS", unit="point-step")
        done = int(partial.done.sum()) * settings.steps   # point-steps finished before this batch

        def evaluate(rows: range) -> dict[str, np.ndarray]:
            nonlocal done
            batch = rows_of(data, rows)
            values = ais_batch(vae, guide, batch, rows, settings, progress=_transitions(report, done, len(rows)),
                               unsupported=unsupported)
            if settings.is_k:
                values["is_log_likelihood"], values["elbo"] = _reference(vae, guide, batch, rows, settings, unsupported)
            done += len(rows) * settings.steps
            return values

        with report:
            values = evaluate_points(vae, partial, settings.points_per_batch(), evaluate)
        reference = {key: values[key] for key in ("is_log_likelihood", "elbo") if key in values}
        if settings.is_k:
            reference["is_k"] = settings.is_k
        return AISResult(steps=settings.steps, chains=settings.chains, leapfrog=settings.leapfrog, proposal=name,
                         data_dim=data_dim, log_px=values["log_px"], log_w=values["log_w"],
                         accept_rate=values["accept_rate"], step_size=values["step_size"],
                         chain_ess=values["chain_ess"], khat=values.get("khat"), reference=reference,
                         chunk_invariant=not unsupported, step_sizes=settings.step_sizes,
                         tune_points=min(settings.tune_points, n) if settings.step_sizes else 0)

    @torch.no_grad()
    def batch(self, vae: VAE, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, *,
              index: torch.Tensor | None = None, unsupported: set | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        values = ais_batch(vae, guide, batch, rows, self.settings, index=index, progress=progress, unsupported=unsupported)
        values.pop("log_w")   # the chains' weights: per point, log p̂ is what a caller compares
        return values


def estimate_log_likelihood_ais(vae: VAE, data: Data, *, proposal: Proposal = "guide", progress: Report = False,
                                partial_path: str | Path | None = None, resume: bool = False,
                                options: dict | None = None, **settings) -> AISResult:
    """:meth:`AnnealedImportanceSampling.estimate` with the settings as keywords
    (:class:`AISSettings`: ``steps``, ``chains``, ``leapfrog``, ``is_k``, ``batch_size``, ``seed``,
    ``compile``); ``partial_path``, ``resume`` and ``options`` as for
    :func:`~.importance.estimate_log_likelihood`."""
    return AnnealedImportanceSampling(**settings).estimate(vae, data, proposal, progress=progress,
                                                           keep=Keep(partial_path, resume, options or {}))


def tune_step_sizes(vae: VAE, guide: Callable, data: tuple[torch.Tensor, ...], settings: AISSettings, *,
                    progress: Report = False) -> tuple[float, ...]:
    """The tuning round (Huang et al. 2020): AIS on the first ``settings.tune_points`` rows of
    ``data`` with every chain's step size adapted toward 65% acceptance, on seeds of its own; per
    temperature β_1..β_T, the median over those points of each point's median over its chains of
    the adapted step size, as a multiple of the point's start scale (β_0, which no forward
    transition targets, takes β_1's). Its weights are thrown away: the estimate's chains then run
    with these step sizes frozen and fresh seeds. Batched and dealt out like any evaluation."""
    n = min(settings.tune_points, num_rows(data))
    report = Progress(progress, n * settings.steps, "AIS tuning", unit="point-step")

    def evaluate(rows: range) -> dict[str, np.ndarray]:
        values = ais_batch(vae, guide, rows_of(data, rows), rows, settings, tune=True,
                           progress=_transitions(report, rows.start * settings.steps, len(rows)))
        return {"step_ratio": values["step_ratio"]}

    with report:
        ratio = evaluate_points(vae, Keep().open(n, {}), settings.points_per_batch(), evaluate)["step_ratio"]
    per_temperature = np.median(ratio, axis=0)   # [T]
    return tuple(float(v) for v in np.concatenate([per_temperature[:1], per_temperature]))


def tuned(vae: VAE, guide: Callable, data: tuple[torch.Tensor, ...], settings: AISSettings, partial: Partial,
          progress: Report = False) -> AISSettings:
    """``settings`` with step sizes per temperature: as given, from a tuning round
    (:func:`tune_step_sizes`) when None, or none when they are to adapt during the run. A signal
    during the tuning round stops the evaluation as one during its first batch would: ``partial``
    (the estimate's finished points, none on a first run) is saved for a resume, which tunes again."""
    if settings.step_sizes is not None or settings.adapt_step_size:
        return settings
    try:
        return settings.but(step_sizes=tune_step_sizes(vae, guide, data, settings, progress=progress))
    except EvaluationInterrupted:
        if current().is_main:
            partial.save()
        raise EvaluationInterrupted(int(partial.done.sum()), partial.n, partial.path) from None


def kernel_options(settings: AISSettings) -> dict:
    """What the per-point values depend on besides T, C and L: step sizes given (their
    fingerprint), or tuned (a function of the points, the seed and ``tune_points``), or adapted
    during the run."""
    return {"adapt_step_size": settings.adapt_step_size, "tune_points": settings.tune_points,
            "step_sizes": None if settings.step_sizes is None else fingerprint({"step_sizes": settings.step_sizes})}


def kernel_summary(step_sizes: tuple[float, ...] | None, tune_points: int) -> dict:
    """How the HMC step sizes were set, for a summary: frozen after a tuning round (with their range
    as multiples of each point's start scale), or adapted during the run."""
    if step_sizes is None:
        return {"step_sizes": "adapted during the run"}
    return {"step_sizes": "tuned, then frozen", "tune_points": tune_points,
            "step_size_scale": {"min": min(step_sizes), "median": float(np.median(step_sizes)),
                                "max": max(step_sizes)}}


def _transitions(report: Progress, done: int, points: int) -> Callable[[int, int], None]:
    """After transition t of a batch of ``points``: ``done`` + t x points point-steps reported,
    and a signal drops the batch at once (the finished ones are kept)."""
    def after(t: int, steps: int) -> None:
        report(done + t * points)
        interrupts.check()
    return after


def _reference(vae: VAE, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, settings: AISSettings,
               unsupported: set[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(log p̂, ELBO) of the batch by importance sampling from the same proposal
    (:meth:`AISSettings.reference`: ``is_k`` draws, eager)."""
    values = importance_batch(vae.bound()[0], guide, batch, rows, settings.reference(), unsupported=unsupported)
    return values["log_px"], values["recon"] - values["kl"]


# ---------------------------------------------------------------------------- BDMC

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
    accept_rate: np.ndarray | None = None          # the forward chains' mean acceptance probability
    step_sizes: tuple[float, ...] | None = None     # per temperature, both directions (None: adapted)
    tune_points: int = 0

    def summary(self) -> dict:
        out = {"method": "bdmc", "n": len(self.lower), "steps": self.steps, "chains": self.chains,
               "leapfrog": self.leapfrog, "proposal": self.proposal, "seed": self.seed,
               **kernel_summary(self.step_sizes, self.tune_points)}
        if self.accept_rate is not None:
            out["accept_rate_mean"] = float(np.mean(self.accept_rate))
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


class BDMC(Estimator):
    """The BDMC sandwich (module docstring) on data simulated from the model: for each simulated
    (z, x), forward AIS from the proposal gives a stochastic lower bound of log p(x), reverse AIS
    from z an upper bound (Grosse et al. 2015); with them come the IS estimate (``is_k`` draws
    from the proposal) and the ELBO of the same points."""

    settings_class = BDMCSettings

    @torch.no_grad()
    def estimate(self, vae: VAE, template: Data, proposal: Proposal = "guide", *, progress: Report = False,
                 keep: Keep = Keep()) -> BDMCResult:
        """The sandwich on one simulated point per row of ``template`` (whose x values are
        replaced; other tensors, e.g. labels, condition the model). The simulation is a function
        of the seed; ``keep`` as for :meth:`AnnealedImportanceSampling.estimate`."""
        template = vae.as_batch(template)
        n = num_rows(template)
        vae.check(template, continuous=True)
        settings = self.settings.but(compile=self.settings.compiles(2 * self.settings.passes(n)))
        data, latents = simulate(vae, template, settings.seed)
        guide, name, _ = proposal_guide(vae, proposal, n)
        partial = keep.open(n, {"method": "bdmc", "steps": settings.steps, "chains": settings.chains,
                                "leapfrog": settings.leapfrog, "proposal": name, "seed": settings.seed, "n": n,
                                "is_k": settings.is_k, **kernel_options(settings)})
        # the forward chains' kernels, tuned on the simulated points, serve the reverse chains too
        settings = tuned(vae, guide, data, settings, partial, progress)
        report = Progress(progress, 2 * n * settings.steps, "BDMC", unit="point-step")
        done = 2 * int(partial.done.sum()) * settings.steps   # point-steps finished before this batch

        def evaluate(rows: range) -> dict[str, np.ndarray]:
            nonlocal done
            batch = rows_of(data, rows)
            forward = ais_batch(vae, guide, batch, rows, settings, progress=_transitions(report, done, len(rows)))
            done += len(rows) * settings.steps
            reverse = ais_batch(vae, guide, batch, rows, settings, progress=_transitions(report, done, len(rows)),
                                reverse_from={site: value[rows.start:rows.stop] for site, value in latents.items()})
            done += len(rows) * settings.steps
            values = {"forward": forward["log_px"], "reverse": reverse["log_px"], "accept_rate": forward["accept_rate"]}
            if settings.is_k:
                values["is"], values["elbo"] = _reference(vae, guide, batch, rows, settings)
            return values

        with report:
            out = evaluate_points(vae, partial, settings.points_per_batch(), evaluate)
        return BDMCResult(steps=settings.steps, chains=settings.chains, leapfrog=settings.leapfrog, proposal=name,
                          seed=settings.seed, lower=out["forward"], upper=out["reverse"], data=data,
                          is_log_likelihood=out.get("is"), elbo=out.get("elbo"), is_k=settings.is_k,
                          accept_rate=out["accept_rate"], step_sizes=settings.step_sizes,
                          tune_points=min(settings.tune_points, n) if settings.step_sizes else 0)


def simulate(vae: VAE, template: tuple[torch.Tensor, ...], seed: int
             ) -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
    """(z, x) ~ p(z) p(x | z), one per row of ``template`` (its x replaced; its other tensors
    condition the model), drawn by ``seed`` without touching the caller's generators: the
    simulated data, and each latent site's values, an exact posterior sample of that data."""
    with forked_rng(vae.device, seed):
        simulated = poutine.trace(poutine.uncondition(vae.bound()[0])).get_trace(None, 1.0, *template)
    observed, _ = unconditioned_observation(simulated)
    latents = {name: site["value"] for name, site in sample_sites(simulated) if name != observed}
    return (simulated.nodes[observed]["value"].detach(), *template[1:]), latents


def bdmc(vae: VAE, template: Data, *, proposal: Proposal = "guide", progress: Report = False,
         partial_path: str | Path | None = None, resume: bool = False, options: dict | None = None,
         **settings) -> BDMCResult:
    """:meth:`BDMC.estimate` with the settings as keywords (:class:`BDMCSettings`: those of AIS;
    not compiled unless ``compile=True``); ``partial_path``, ``resume`` and ``options`` as for
    :func:`~.importance.estimate_log_likelihood`."""
    return BDMC(**settings).estimate(vae, template, proposal, progress=progress,
                                     keep=Keep(partial_path, resume, options or {}))
