"""The estimators' settings, each stated once: a field (:func:`pyrovae.core.options.option`)
with its default, its help and its check. Python builds them (``ISSettings(k=1000)``, checked
when made: a bad value is a :class:`~pyrovae.core.errors.UsageError` naming the parameter), and
the CLI builds its flags from the same fields (``pyrovae.cli.options.options_from``), so a default
lives in one place.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, TypeVar

import torch

from ..core.errors import UsageError
from ..core.options import Check, Options, fields, option

COMPILE_PAIRS = 1_000_000  # auto-compile from here: ~5 s of eager work vs 1 s of compiling (11 s the first time)
BATCH_SIZE, CHUNK_SIZE = 200, 50           # IS: datapoints x particles per decoder pass (benchmarks/bench_evaluate.py)
STEPS, CHAINS, LEAPFROG = 1000, 16, 5      # AIS: Wu et al. (2017) use up to 10,000 steps and 16 chains
IS_K = 1000                                # AIS: importance samples of the reference IS estimate
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
    batch_size: int = option(BATCH_SIZE, "Datapoints per pass.", check=whole(1))
    chunk_size: int = option(CHUNK_SIZE, "Particles per decoder pass.", check=whole(1))


def _frozen_step_sizes(value: Any) -> str | None:
    return None if value is None else "is not available yet (tuned-then-frozen step sizes come with issue 22)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class AISSettings(SamplingSettings):
    """Annealed importance sampling's (:mod:`.ais`): ``steps`` intermediate distributions (a sigmoid
    schedule), ``chains`` per point, HMC with ``leapfrog`` steps and per-chain adapted step sizes;
    ``batch_size`` points anneal together (memory is flat in ``steps``); ``is_k`` importance samples
    of a reference IS estimate on the same points (0: none)."""

    steps: int = option(STEPS, "Intermediate distributions T (a sigmoid schedule). The cost is T x chains x "
                               "leapfrog decoder passes (forward and backward) per point: the defaults cost about 50 "
                               "times K=5000 IS.", check=whole(1))
    chains: int = option(CHAINS, "Chains per point.", check=whole(1))
    leapfrog: int = option(LEAPFROG, "Leapfrog steps per HMC transition (step sizes adapt per chain toward 65% "
                                     "acceptance).", check=whole(1))
    is_k: int = option(IS_K, "Importance samples of a reference IS estimate on the same points (0: none).",
                       check=whole(0))
    batch_size: int | None = option(None, f"Points annealed together [default: {PAIRS:,} / chains].",
                                    check=optional(whole(1)))
    # where tuned-then-frozen HMC step sizes go: one per temperature ([steps], or [steps, points]),
    # used instead of adapting each chain's; refused until they are implemented
    step_sizes: torch.Tensor | None = option(None, "Frozen HMC step sizes per temperature (not available yet).",
                                             cli=False, check=_frozen_step_sizes)

    def reference(self) -> ISSettings | None:
        """The reference IS estimate's settings: ``is_k`` draws from the same proposal with the same
        seed, never compiled (None when ``is_k`` is 0)."""
        return ISSettings(k=self.is_k, seed=self.seed, compile=False) if self.is_k else None

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
