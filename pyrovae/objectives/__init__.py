"""Training objectives, registered by name (the CLI's ``--elbo`` choices); all are computed
from Pyro traces of the bound model and guide (:func:`pyrovae.programs.bind`).

- ``trace``:     Pyro's Trace_ELBO, E_q[log p(x, z) - log q(z | x)] by Monte Carlo.
- ``meanfield``: Pyro's TraceMeanField_ELBO, the same with each latent site's KL in closed
  form; exact only for a mean-field guide, so other guides are refused.
- ``iwae``:      the per-datapoint importance-weighted bound L_K (:mod:`.iwae`).

Particles are always vectorized. With ``jit``, Pyro's JIT versions (repaired in
:mod:`._pyro_compat`) compile the loss once per batch shape.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ..core.traces import ElboTerms, LogWeights, elbo_terms, iwae_bound, log_weights, particle_traces
from ._pyro_compat import FixedJitTrace_ELBO, FixedJitTraceMeanField_ELBO, ShapeKeyedJit
from ..core.errors import UsageError
from ..core.errors import option as named
from ..core.options import Options, non_negative, option, size
from .iwae import IWAE_ELBO


@dataclass(frozen=True)
class ObjectiveSpec:
    eager: Callable[..., ELBO]
    jit: type | None = None             # Pyro's JIT class, when there is one
    needs_mean_field_guide: bool = False


OBJECTIVES: dict[str, ObjectiveSpec] = {
    "trace": ObjectiveSpec(Trace_ELBO, FixedJitTrace_ELBO),
    "meanfield": ObjectiveSpec(TraceMeanField_ELBO, FixedJitTraceMeanField_ELBO, needs_mean_field_guide=True),
    "iwae": ObjectiveSpec(lambda num_particles, **_: IWAE_ELBO(num_particles)),
}


@dataclass
class ObjectiveOptions(Options):
    """What is maximized: the objective, its particles, the JIT, and the weight of the KL term."""

    elbo: str = option("trace", "Trace_ELBO, TraceMeanField_ELBO (analytic KL), or the IWAE bound.",
                       choices=lambda: list(OBJECTIVES))
    particles: int = option(1, "Samples of z per datapoint in each step (the K of --elbo iwae).", check=size)
    jit: bool | None = option(None, "Pyro's JIT ELBOs: the compiled loss [default: on for trace and meanfield, off "
                              "for iwae].", flag=True)
    beta: float = option(1.0, "Coefficient of the KL term: loss = -(reconstruction - beta KL); 1 is the true ELBO.",
                         check=lambda b: None if isinstance(b, (int, float)) and math.isfinite(b) and b > 0 else
                         "must be a number > 0 (Pyro cannot scale a site by 0)")
    kl_warmup: int = option(0, "Ramp beta linearly from 0 over this many epochs (0: no warm-up).",
                            check=non_negative("epochs"))

    def check(self) -> None:
        if self.jit and OBJECTIVES[self.elbo].jit is None:
            raise UsageError(f"{named('jit', True)} is not available for {named('elbo', self.elbo)} (Pyro has no JIT "
                             f"version of it); drop {named('jit', True)}")


def make_objective(name: str, num_particles: int = 1, jit: bool = False, rows: int | None = None
                   ) -> ELBO | ShapeKeyedJit:
    """The Pyro objective for ``--elbo name``; training uses its ``differentiable_loss``. With
    ``jit``, ``rows`` (the run's batch size) is the one batch size compiled; others run eagerly."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {tuple(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if jit:
        if spec.jit is None:
            raise ValueError(f"--jit is not available for --elbo {name} (Pyro has no JIT version); drop --jit")
        return ShapeKeyedJit(spec.jit, options, eager=spec.eager(**options), rows=rows)
    return spec.eager(**options)


__all__ = ["OBJECTIVES", "make_objective", "IWAE_ELBO", "ElboTerms", "LogWeights", "elbo_terms", "iwae_bound",
           "log_weights", "particle_traces"]
