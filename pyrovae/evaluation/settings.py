"""The estimators' settings, each stated once: a field (:func:`pyrovae.core.options.option`)
with its default, its help and its check. Python builds them (``ISSettings(k=1000)``, checked
when made: a bad value is a :class:`~pyrovae.core.errors.UsageError` naming the parameter), and
the CLI builds its flags from the same fields (``pyrovae.cli.options.options_from``), so a default
lives in one place.
"""
from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any, TypeVar

from ..core.errors import UsageError
from ..core.errors import option as named
from ..core.options import Check, Options, fields, option

COMPILE_PAIRS = 1_000_000  # auto-compile from here: ~5 s of eager work vs 1 s of compiling (11 s the first time)
BATCH_SIZE, CHUNK_SIZE = 200, 50           # IS: datapoints x particles per decoder pass (benchmarks/bench_evaluate.py)
STEPS, CHAINS, LEAPFROG = 1000, 16, 5      # AIS: Wu et al. (2017) use up to 10,000 steps and 16 chains
IS_K = 1000                                # AIS: importance samples of the reference IS estimate
TUNE_POINTS = 100                          # AIS: points of the round that tunes the step sizes
PAIRS = 10_000                             # AIS: (chain, point) pairs per batch: [pairs, pixels] buffers ~31 MB

S = TypeVar("S", bound="Settings")


def whole(low: int | None = None) -> Check:
    """A whole number (not a bool, not 2.5), at least ``low`` when given."""
    wanted = "a whole number" + (f" >= {low}" if low is not None else "")
    return lambda value: (None if isinstance(value, numbers.Integral) and not isinstance(value, bool)
                          and (low is None or value >= low) else f"must be {wanted}")


def optional(check: Check, none: str = "") -> Check:
    """``check``, or None (``none``: what None means, said with the problem)."""
    def checked(value: Any) -> str | None:
        problem = None if value is None else check(value)
        return f"{problem} ({none})" if problem and none else problem
    return checked


def same(owner: type, name: str, **changes: Any) -> Any:
    """The option ``name`` of the settings class ``owner`` once more, e.g. under another name or with
    another help (``changes``: ``default``, ``help``, ``check``, ...): one default and one check."""
    found = owner.__dataclass_fields__[name]
    default = found.default if found.default is not dataclasses.MISSING else found.default_factory()
    metadata = {**found.metadata, "default": default, **changes}
    return option(metadata.pop("default"), metadata.pop("help"), **metadata)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings(Options):
    """The settings of an estimator (or of an evaluation of a run): options that are checked when
    made and never change; :meth:`but` makes a changed copy."""

    def __post_init__(self) -> None:
        self.validate()

    def but(self: S, **changes: Any) -> S:
        """A copy with ``changes``; a name that is not one of the settings is a UsageError."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            known = ", ".join(f.name for f in fields(self))
            raise UsageError(f"{type(self).__name__} has no setting {', '.join(sorted(unknown))}; "
                             f"its settings are {known}")
        return dataclasses.replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings(Settings):
    """What every Monte Carlo estimator takes: the seed of its draws, and whether to compile."""

    seed: int = option(0, "Seeds every draw (per point and particle).", check=whole())
    compile: bool | None = option(
        None, "Fuse the log densities with torch.compile (about 1 s to compile, 11 s the first time; about a "
              f"quarter less time after) [default: from {COMPILE_PAIRS:,} decoder passes on].", flag=True)

    def compiles(self, passes: int) -> bool:
        """Whether to compile: as asked, or (None) when there are at least ``COMPILE_PAIRS`` passes."""
        return passes >= COMPILE_PAIRS if self.compile is None else bool(self.compile)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ISSettings(SamplingSettings):
    """Importance sampling's (:mod:`.importance`): K draws per point; ``batch_size`` points and
    ``chunk_size`` particles through the decoder at once (memory grows with their product, not
    with K)."""

    k: int = option(5000, "Importance samples per datapoint.", check=whole(1))
    batch_size: int | None = option(None, f"Datapoints per pass [default: {BATCH_SIZE}, or as many as fit in memory].",
                                    check=optional(whole(1)))
    chunk_size: int = option(CHUNK_SIZE, "Particles per decoder pass.", check=whole(1))


def _step_sizes(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or not value or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) and v > 0 for v in value):
        return "must be a sequence of positive finite numbers, one per temperature (or None: tuned first)"
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class AISSettings(SamplingSettings):
    """Annealed importance sampling's (:mod:`.ais`): ``steps`` intermediate distributions (a sigmoid
    schedule), ``chains`` per point, HMC with ``leapfrog`` steps; ``batch_size`` points anneal
    together (memory is flat in ``steps``); ``is_k`` importance samples of a reference IS estimate
    on the same points (0: none).

    The HMC step sizes are fixed before the chains whose weights are reported (Huang et al. 2020):
    ``step_sizes`` gives one per temperature β_0..β_T, as multiples of each point's start scale
    (half the smallest standard deviation of its q); when None, a tuning round on the first
    ``tune_points`` points, with step sizes adapted toward 65% acceptance and other seeds, fixes
    them. Every transition is then a fixed kernel and the estimate a stochastic lower bound.
    ``adapt_step_size`` instead adapts each chain's step size during the run (Wu et al. 2017's
    code): a bias below the Monte Carlo error in practice, but no longer a bound by construction."""

    steps: int = option(STEPS, "Intermediate distributions T (a sigmoid schedule). The cost is T x chains x "
                               "leapfrog decoder passes (forward and backward) per point: the defaults cost about 50 "
                               "times K=5000 IS.", check=whole(1))
    chains: int = option(CHAINS, "Chains per point.", check=whole(1))
    leapfrog: int = option(LEAPFROG, "Leapfrog steps per HMC transition.", check=whole(1))
    is_k: int = option(IS_K, "Importance samples of a reference IS estimate on the same points (0: none).",
                       check=whole(0))
    batch_size: int | None = option(None, f"Points annealed together [default: {PAIRS:,} / chains].",
                                    check=optional(whole(1)))
    tune_points: int = option(TUNE_POINTS, "Points of the tuning round that fixes the HMC step size per "
                                           "temperature before the estimate's chains run (the first ones).",
                              check=whole(1))
    adapt_step_size: bool = option(False, "Adapt each chain's HMC step size during the run instead (toward 65% "
                                          "acceptance, Wu et al. 2017's code): no tuning round, but the chains' "
                                          "kernels depend on their past, so the estimate is no longer a stochastic "
                                          "lower bound by construction.", flag=True)
    step_sizes: tuple[float, ...] | None = option(None, "HMC step sizes per temperature beta_0..beta_T, as multiples "
                                                        "of each point's start scale (None: tuned first).",
                                                  cli=False, check=_step_sizes)

    def check(self) -> None:
        if self.step_sizes is not None:
            if len(self.step_sizes) != self.steps + 1:
                raise UsageError(f"{named('step_sizes')} must hold steps + 1 = {self.steps + 1} numbers (one per "
                                 f"temperature), got {len(self.step_sizes)}")
            if self.adapt_step_size:
                raise UsageError(f"{named('step_sizes')} fixes every step size; drop {named('adapt_step_size', True)}")
            object.__setattr__(self, "step_sizes", tuple(float(v) for v in self.step_sizes))

    def reference(self) -> ISSettings | None:
        """The reference IS estimate's settings: ``is_k`` draws from the same proposal with the same
        seed, compiled when the chains are (None when ``is_k`` is 0). At K=5000 it is about a sixth
        of a certificate's work, so the fused densities matter to it as much as to the chains."""
        return ISSettings(k=self.is_k, seed=self.seed, compile=self.compile) if self.is_k else None

    def points_per_batch(self) -> int:
        """``batch_size``, or as many points as make ``PAIRS`` (chain, point) pairs."""
        return self.batch_size or max(1, PAIRS // self.chains)

    def passes(self, n: int) -> int:
        """Decoder passes (each forward and backward) for ``n`` points: n x chains x steps x leapfrog."""
        return n * self.chains * self.steps * self.leapfrog


@dataclasses.dataclass(frozen=True, kw_only=True)
class BDMCSettings(AISSettings):
    """BDMC's (:mod:`.ais`): forward and reverse AIS with these settings, on points simulated from
    the model by ``seed``; not compiled unless asked."""

    seed: int = same(SamplingSettings, "seed", help="Seeds the simulation and every draw.")
    compile: bool | None = same(SamplingSettings, "compile", default=False, cli=False)


def configured(cls: type[S], settings: S | None, changes: dict[str, Any]) -> S:
    """``settings`` (default ``cls()``) with ``changes``: what an estimator's constructor and the
    functional API's keyword arguments both go through."""
    settings = cls() if settings is None else settings
    if not isinstance(settings, cls):
        raise UsageError(f"settings must be a {cls.__name__}, got a {type(settings).__name__}")
    return settings.but(**changes) if changes else settings
