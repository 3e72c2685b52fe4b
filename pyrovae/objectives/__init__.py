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

from dataclasses import dataclass
from typing import Callable

from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from ..core.traces import ElboTerms, LogWeights, elbo_terms, iwae_bound, log_weights, particle_traces
from ._pyro_compat import FixedJitTrace_ELBO, FixedJitTraceMeanField_ELBO, ShapeKeyedJit
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


def make_objective(name: str, num_particles: int = 1, jit: bool = False) -> ELBO | ShapeKeyedJit:
    """The Pyro objective for ``--elbo name``; training uses its ``differentiable_loss``."""
    if name not in OBJECTIVES:
        raise ValueError(f"unknown objective {name!r}; choose one of {tuple(OBJECTIVES)}")
    spec = OBJECTIVES[name]
    options = dict(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    if jit:
        if spec.jit is None:
            raise ValueError(f"--jit is not available for --elbo {name} (Pyro has no JIT version); drop --jit")
        return ShapeKeyedJit(spec.jit, options)
    return spec.eager(**options)


__all__ = ["OBJECTIVES", "make_objective", "IWAE_ELBO", "ElboTerms", "LogWeights", "elbo_terms", "iwae_bound",
           "log_weights", "particle_traces"]
