"""A certified log p(x): Wu et al.'s protocol in one estimator, valid by construction.

Wu, Burda, Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based
generative models", estimate log p(x) by AIS and validate the schedule by BDMC on data simulated
from the model (Grosse, Ghahramani & Adams 2015): for (z, x) ~ p(z) p(x | z), z is an exact
posterior sample of x, so forward AIS from q gives a stochastic lower bound L̂ and reverse AIS from
z a stochastic upper bound Û of log p(x), and the mean gap Û − L̂ over the simulated points bounds
how far forward AIS with those settings is below the truth on such data. :class:`Certification`
automates the protocol:

1. BDMC on ``bdmc_n`` (≥ 100) simulated points at T = ``steps``, then T·r, T·r², ... (r =
   ``growth``, √2 by default) until the gap's upper confidence bound ḡ + z·SE(g) (z =
   ``CONFIDENCE_Z``, one-sided 95%) is at most ``target_gap`` nats; that T is chosen. The
   estimate on every point costs T per point, so a chosen T is at most r times the smallest
   that passes; the ladder's own cost, about r / (r − 1) times one BDMC run at the chosen T
   (3.4 for √2, 2 for doubling), is paid once, on ``bdmc_n`` points.
2. The estimate at T on every point (:class:`~.ais.AnnealedImportanceSampling`): a tuning round on
   the first ``tune_points`` points fixes the HMC step size per temperature, then the estimate's
   chains run with them frozen on fresh seeds (Huang, Makhzani, Cao, Grosse & Duvenaud 2020,
   "Evaluating lossy compression rates of deep generative models"), so that every transition is a
   fixed kernel and E[w] = p(x) holds exactly (Neal 2001): log p̂ is a stochastic lower bound.
   BDMC's kernels are set the same way, so the gap is the gap of this very protocol.
3. A convergence check: on the first ``check_points`` points, the estimate at 2T; the paired
   difference d = log p̂_2T − log p̂_T must satisfy |d̄| + z·SE(d) ≤ ``target_gap``.
4. The certificate (:class:`Certificate`): log p̂ ± SE, the chosen T and its BDMC gap ± SE,
   acceptance, IS with ``is_k`` draws and the ELBO of the same points, the check, and the seconds.

The BDMC gap is measured on simulated data, where the posterior is the model's own; on real data
the gap can differ (Wu et al. discuss this), which is why the convergence check on real points is
part of the certificate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from ..core.errors import UsageError
from ..core.errors import option as named
from ..core.options import option, positive
from ..core.progress import Report
from ..core.programs import Data, num_rows, rows_of
from ..core.vae import VAE
from . import diagnostics
from .ais import BDMC, AISResult, AnnealedImportanceSampling
from .driver import Keep
from .estimator import Estimator, finite
from .proposals import Proposal
from .settings import AISSettings, BDMCSettings, SamplingSettings, same, whole

A = TypeVar("A", bound=AISSettings)

CONFIDENCE_Z = 1.645        # one-sided 95%: the gap's upper confidence bound is ḡ + 1.645 SE
MIN_BDMC_POINTS = 100       # fewer simulated points make the gap's SE itself unreliable


def _above_one(value) -> str | None:
    return None if positive(value) is None and value > 1 else "must be a number above 1"


@dataclass(frozen=True, kw_only=True)
class CertifySettings(SamplingSettings):
    """The protocol's settings (module docstring): the target, the BDMC ladder, the chains, the
    tuning round, the convergence check and the reference IS estimate."""

    target_gap: float = option(0.1, "Nats: the BDMC gap's upper confidence bound (mean + 1.645 SE) that chooses T, "
                                    "and the most the estimates at T and 2T may differ by.", check=positive)
    bdmc_n: int = option(400, "Points (z, x) simulated from the model for BDMC (the gap's SE falls as 1 / sqrt(n): "
                              "more points let a shorter T pass the target).", check=whole(MIN_BDMC_POINTS))
    steps: int = option(50, "The first T of the ladder (T, T·growth, T·growth², ...).", check=whole(1))
    growth: float = option(math.sqrt(2), "The ladder's ratio between successive T (> 1): a chosen T is at most "
                                         "this many times the smallest that meets the target.", check=_above_one)
    max_steps: int = option(6400, "The largest T to try before giving up.", check=whole(1))
    chains: int = same(AISSettings, "chains")
    leapfrog: int = same(AISSettings, "leapfrog")
    tune_points: int = same(AISSettings, "tune_points")
    check_points: int = option(100, "Points of the convergence check at 2T (the first ones).", check=whole(1))
    is_k: int = same(AISSettings, "is_k", default=5000, check=whole(1))
    batch_size: int | None = same(AISSettings, "batch_size")

    def check(self) -> None:
        if self.max_steps < self.steps:
            raise UsageError(f"{named('max_steps', self.max_steps)} is below {named('steps', self.steps)}; "
                             f"pass {named('max_steps')} {self.steps} or more")

    def ladder(self) -> list[int]:
        """T, round(T·r), round(T·r²), ... (r = ``growth``; each at least one more than the last) up
        to ``max_steps``."""
        out = [self.steps]
        while True:
            following = max(out[-1] + 1, round(self.steps * self.growth ** len(out)))
            if following > self.max_steps:
                return out
            out.append(following)

    def annealing(self, steps: int, is_k: int = 0, kind: type[A] = AISSettings) -> A:
        """AIS (or ``kind``: BDMC) at ``steps`` with this protocol's chains, leapfrog steps, tuning
        round and seed."""
        return kind(steps=steps, chains=self.chains, leapfrog=self.leapfrog, is_k=is_k,
                           batch_size=self.batch_size, tune_points=self.tune_points, seed=self.seed,
                           compile=self.compile)


def upper_bound(mean: float, se: float) -> float:
    """The one-sided upper confidence bound mean + z·SE (z = ``CONFIDENCE_Z``)."""
    return mean + CONFIDENCE_Z * se


@dataclass
class Certificate:
    """What :meth:`Certification.certify` found: the estimate at the chosen T, the BDMC ladder
    that chose it, the convergence check, and the seconds of each stage."""

    settings: CertifySettings
    estimate: AISResult
    ladder: list[dict]
    check: dict
    seconds: dict

    @property
    def steps(self) -> int:
        return self.estimate.steps

    @property
    def chosen(self) -> dict:
        return self.ladder[-1]

    @property
    def certified(self) -> bool:
        return self.chosen["upper"] <= self.settings.target_gap and self.check["agrees"]

    def summary(self) -> dict:
        """The certificate as one JSON-safe object."""
        s = self.estimate.summary()
        chosen = self.chosen
        return {
            "method": "certify", "certified": self.certified, "target_gap": self.settings.target_gap,
            "confidence_z": CONFIDENCE_Z,
            "log_likelihood": s["log_likelihood"], "log_likelihood_se": s["log_likelihood_se"],
            "bits_per_dim": s["bits_per_dim"], "n": s["n"], "proposal": s["proposal"],
            "steps": self.steps, "chains": s["chains"], "leapfrog": s["leapfrog"],
            "bdmc_gap": chosen["gap"], "bdmc_gap_se": chosen["gap_se"], "bdmc_gap_upper": chosen["upper"],
            "bdmc_n": self.settings.bdmc_n, "bdmc_lower_bound": chosen["forward_lower_bound"],
            "bdmc_upper_bound": chosen["reverse_upper_bound"], "bdmc_ladder": self.ladder,
            "accept_rate_mean": s["accept_rate_mean"], "step_sizes": s["step_sizes"],
            "tune_points": s.get("tune_points"), "step_size_scale": s.get("step_size_scale"),
            "chain_ess_frac_mean": s["chain_ess_frac_mean"],
            "is_k": s.get("is_k"), "is_log_likelihood": s.get("is_log_likelihood"),
            "is_log_likelihood_se": s.get("is_log_likelihood_se"), "ais_minus_is": s.get("ais_minus_is"),
            "elbo": s.get("elbo"), "elbo_se": s.get("elbo_se"),
            "convergence": self.check, "chunk_invariant": s["chunk_invariant"], "seconds": self.seconds,
        }


class Certification(Estimator):
    """Wu et al.'s protocol (module docstring): ``Certification(target_gap=0.1).certify(vae, x,
    template)``; bad settings are a UsageError naming the parameter."""

    settings_class = CertifySettings

    @torch.no_grad()
    def certify(self, vae: VAE, data: Data, template: Data | None = None, proposal: Proposal = "guide", *,
                bdmc_proposal: str = "guide", progress: Report = False, keep: Keep = Keep(),
                say=None) -> Certificate:
        """The certificate of log p(x) for every row of ``data``. BDMC simulates one point per row
        of ``template`` (default: the rows of ``data``, cycled to ``bdmc_n``) and starts its chains
        at ``bdmc_proposal`` (the run's q, or "prior" for a guide without an encoder); the estimate
        starts at ``proposal``. ``keep`` keeps the estimate's finished points after an interrupt
        (the BDMC ladder and the check are computed again on resuming: a few percent of the work);
        ``say(line)`` hears each stage's result. Raises UsageError when no T up to ``max_steps``
        brings the gap under the target."""
        settings = self.settings
        data = vae.as_batch(data)
        template = vae.as_batch(data if template is None else template)
        template = rows_of(template, [i % num_rows(template) for i in range(settings.bdmc_n)])
        tell = say or (lambda line: None)
        started = time.perf_counter()
        ladder = []
        for steps in settings.ladder():
            t0 = time.perf_counter()
            result = BDMC(settings.annealing(steps, kind=BDMCSettings)).estimate(vae, template, bdmc_proposal,
                                                                           progress=progress)
            gap = result.upper - result.lower
            mean, se = diagnostics.mean_and_se(gap)
            row = {"steps": steps, "gap": float(mean), "gap_se": float(se), "upper": upper_bound(mean, se),
                   "forward_lower_bound": float(np.mean(result.lower)),
                   "reverse_upper_bound": float(np.mean(result.upper)),
                   "accept_rate_mean": float(np.mean(result.accept_rate)),
                   "seconds": round(time.perf_counter() - t0, 3)}
            ladder.append(row)
            tell(f"BDMC, T = {steps}: gap {mean:.4f} ± {se:.4f} nats (upper bound {row['upper']:.4f}, target "
                 f"{settings.target_gap})")
            if row["upper"] <= settings.target_gap:
                break
        else:
            raise UsageError(f"BDMC's gap at T = {ladder[-1]['steps']} is {ladder[-1]['gap']:.4f} ± "
                             f"{ladder[-1]['gap_se']:.4f} nats, above {named('target_gap', settings.target_gap)}; "
                             f"pass a larger {named('max_steps')} (or {named('target_gap')})")
        steps = ladder[-1]["steps"]
        bdmc_seconds = time.perf_counter() - started

        t0 = time.perf_counter()
        estimator = AnnealedImportanceSampling(settings.annealing(steps, is_k=settings.is_k))
        estimate = estimator.estimate(vae, data, proposal, progress=progress, keep=keep)
        estimate_seconds = time.perf_counter() - t0
        tell(f"AIS, T = {steps}, {estimate.n} points: log p(x) {np.mean(estimate.log_px):.4f}")

        t0 = time.perf_counter()
        check = self._check(vae, data, proposal, estimate, steps, progress)
        tell(f"check on {check['points']} points: log p̂ at 2T - at T = {check['difference']:.4f} ± "
             f"{check['difference_se']:.4f} nats ({'agrees' if check['agrees'] else 'DOES NOT agree'})")
        seconds = {"bdmc": round(bdmc_seconds, 3), "estimate": round(estimate_seconds, 3),
                   "check": round(time.perf_counter() - t0, 3), "total": round(time.perf_counter() - started, 3)}
        return Certificate(settings, estimate, ladder, check, seconds)

    def _check(self, vae: VAE, data: tuple[torch.Tensor, ...], proposal: Proposal, estimate: AISResult, steps: int,
               progress: Report) -> dict:
        """The estimate at 2T on the first ``check_points`` points, paired with the estimate at T."""
        settings = self.settings
        m = min(settings.check_points, estimate.n)
        subset = tuple(p[:m] for p in proposal) if isinstance(proposal, tuple) else proposal
        longer = AnnealedImportanceSampling(settings.annealing(2 * steps)).estimate(
            vae, rows_of(data, range(m)), subset, progress=progress)
        difference = longer.log_px - estimate.log_px[:m]
        mean, se = diagnostics.mean_and_se(difference)
        se = float(se) if m > 1 and math.isfinite(se) else math.inf
        return {"points": m, "steps": 2 * steps, "log_likelihood_at_t": float(np.mean(estimate.log_px[:m])),
                "log_likelihood_at_2t": float(np.mean(longer.log_px)), "difference": float(mean),
                "difference_se": finite(se), "agrees": abs(float(mean)) + CONFIDENCE_Z * se <= settings.target_gap,
                "accept_rate_mean": float(np.mean(longer.accept_rate))}


def certify(vae: VAE, data: Data, template: Data | None = None, *, proposal: Proposal = "guide",
            bdmc_proposal: str = "guide", progress: Report = False, keep: Keep = Keep(), **settings) -> Certificate:
    """:meth:`Certification.certify` with the settings as keywords (:class:`CertifySettings`)."""
    return Certification(**settings).certify(vae, data, template, proposal, bdmc_proposal=bdmc_proposal,
                                             progress=progress, keep=keep)


__all__ = ["CONFIDENCE_Z", "CertifySettings", "Certificate", "Certification", "certify", "upper_bound"]
