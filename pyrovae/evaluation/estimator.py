"""What the estimators of log p(x) share: an object holding its settings, and one result type.

    estimator = ImportanceSampling(k=5000)             # or ImportanceSampling(ISSettings(k=5000))
    result = estimator.estimate(vae, x, proposal="guide")
    result.summary()      # means over the points, their standard errors, diagnostics (JSON-safe)
    result.columns()      # per-point values: index, log_px, then the estimator's own

Every estimator (:class:`~.importance.ImportanceSampling`,
:class:`~.ais.AnnealedImportanceSampling`, :class:`~.bdmc.BDMC`) takes its points in batches
through one driver (:func:`.driver.evaluate_points`): draws seeded per point, so a point's value
does not depend on its batch, the chunk sizes, a resumed interruption or the processes sharing
the work; :attr:`Estimate.chunk_invariant` says where a proposal site could not keep that promise.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch

from ..core.errors import UsageError, option
from ..core.files import atomic_path
from . import diagnostics
from .settings import Settings, configured


def finite(value: Any) -> float | None:
    """``value`` as a float, or None where it is not finite (JSON has no inf or NaN)."""
    return float(value) if np.isfinite(value) else None


def standard_error(values: np.ndarray) -> float | None:
    """std / sqrt(N) of per-point values (None for a single point)."""
    return finite(diagnostics.mean_and_se(values)[1])


@dataclass(kw_only=True)
class Estimate:
    """Per-datapoint estimates log p̂(x_i) (numpy float64 of length N, in nats), what they were
    drawn from, and whether they are invariant to batching (``chunk_invariant``: False when some
    proposal site drew from torch's global generator instead of the seeded noise)."""

    method: ClassVar[str] = ""
    proposal: str
    data_dim: int
    log_px: np.ndarray
    chunk_invariant: bool = True

    @property
    def n(self) -> int:
        return len(self.log_px)

    def columns(self) -> dict[str, np.ndarray]:
        """The per-point values as named columns (for ``per_point``): the estimator's own follow."""
        return {"index": np.arange(self.n), "log_px": self.log_px}

    def summary(self) -> dict:
        """The mean of log p̂ over the N points, its standard error std / sqrt(N), and bits per
        dimension; an estimator adds its own. JSON-safe: a value that is not finite is None."""
        return {"method": self.method, "log_likelihood": float(np.mean(self.log_px)),
                "log_likelihood_se": standard_error(self.log_px),
                "bits_per_dim": float(np.mean(diagnostics.bits_per_dim(self.log_px, self.data_dim))),
                "n": self.n, "proposal": self.proposal, "chunk_invariant": self.chunk_invariant}


class Estimator:
    """An estimator with its settings: ``Estimator(settings, **changes)``, e.g.
    ``ImportanceSampling(k=1000)``; bad settings are a UsageError naming the parameter."""

    settings_class: ClassVar[type[Settings]] = Settings

    def __init__(self, settings: Settings | None = None, **changes: Any):
        self.settings = configured(self.settings_class, settings, changes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings})"

    def batch(self, vae: Any, guide: Callable, batch: tuple[torch.Tensor, ...], rows: range, *,
              index: torch.Tensor | None = None, unsupported: set | None = None,
              progress: Callable[[int, int], None] | None = None) -> dict[str, np.ndarray]:
        """Per-point values (``log_px`` among them) of one batch of rows, from ``guide`` as the
        proposal (a guide over the batch's rows, ``index`` its rows): what :meth:`estimate` does per
        batch, for a caller with a proposal of its own per batch (compare's q*)."""
        raise NotImplementedError(f"{type(self).__name__} estimates whole data sets only")


def write_per_point(result: Estimate, path: str | Path) -> Path:
    """Write ``result``'s per-datapoint columns to ``path`` (.csv or .npz), atomically."""
    path = Path(path)
    columns = result.columns()
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".npz"):
        raise UsageError(f"{option('per-point')} must end in .csv or .npz, got {str(path)!r}")
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            with open(tmp, "wb") as file:  # a file object: np.savez would append .npz to a name
                np.savez(file, **columns)
        else:
            table = np.column_stack([np.asarray(v, dtype=np.float64) for v in columns.values()])
            fmt = ["%d"] + ["%.17g"] * (len(columns) - 1)
            np.savetxt(tmp, table, fmt=fmt, delimiter=",", header=",".join(columns), comments="")
    return path
