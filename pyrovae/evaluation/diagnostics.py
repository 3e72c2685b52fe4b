"""Diagnostics for importance-sampling estimates of log p(x) and for the latent code.

With K draws z_k ~ q(z | x) and log weights log w_k = log p(x, z_k) - log q(z_k | x):

- ESS fraction (Kong 1992; Owen 2013, ch. 9):  ESS / K = (Σ_k w_k)² / (K Σ_k w_k²), in (0, 1].
  1 when every weight is equal (q is the posterior), ≈ 1/K when one weight dominates.
- Pareto k-hat (Yao, Vehtari, Simpson & Gelman 2018, "Yes, but Did It Work?: Evaluating
  Variational Inference"; Vehtari et al. 2024, "Pareto Smoothed Importance Sampling", JMLR):
  the shape of a generalized Pareto distribution fitted to the largest weights. Weights have
  finite variance only for k < 1/2; for k > 0.7 the estimate is unreliable at any practical K.
- Active units (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders"):
  latent dim d is active when A_d = Var_x( E_q[z_d | x] ) > 0.01.
- Bits per dim: -log p(x) / (D ln 2), with log p(x) in nats and D the data dimension.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable

import numpy as np
import torch

AU_THRESHOLD = 0.01  # Burda et al. (2016)
MIN_KHAT_DRAWS = 25  # ArviZ fits the tail of the largest min(0.2 K, 3 sqrt(K)) weights: too few below this

PSISFunction = Callable[[np.ndarray], "tuple[np.ndarray, np.ndarray]"]


def ess_fraction(log_w: torch.Tensor) -> torch.Tensor:
    """Importance-sampling ESS / K = 1 / (K Σ_k w̄_k²) = exp(2 log Σ w - log Σ w²) / K per
    datapoint, with w̄ the normalized weights; ``log_w`` is [K, batch], the result [batch]."""
    return torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)) / log_w.shape[0]


def mean_and_se(values) -> tuple[float, float]:
    """The mean of ``values`` and its standard error std / sqrt(n) (NaN for a single value)."""
    values = np.asarray(torch.as_tensor(values, dtype=torch.float64).cpu())
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else float("nan")
    return float(values.mean()), se


def _psis_backend() -> tuple[PSISFunction, float]:
    """ArviZ's PSIS as (psislw, sign): ``psislw(sign * log_ratios)`` fits the right tail of the
    log ratios and returns (smoothed log weights, k-hat), samples on the last axis.

    arviz 0.x: ``arviz.psislw`` takes the log ratios themselves. arviz 1.x moved PSIS to
    arviz-stats, whose array-level ``psislw`` expects log-likelihood-like input and negates it
    (in PSIS-LOO the ratios are 1 / p(y_i | θ)), so the log ratios go in negated.
    """
    import arviz  # imported lazily: importing arviz takes about a second

    if int(arviz.__version__.split(".")[0]) < 1:
        return arviz.psislw, 1.0
    from arviz_stats.base import array_stats

    return array_stats.psislw, -1.0


def psis_khat(log_w: np.ndarray | torch.Tensor) -> np.ndarray:
    """PSIS Pareto k-hat of importance log weights ``log_w`` of shape [batch, K] or [K]
    (samples on the last axis); returns shape [batch] (or a 0-d array).

    Rows whose weights are all equal (spread < 1e-8 in log space: q is the exact posterior)
    have no tail to fit; their k-hat is -inf. With fewer than ``MIN_KHAT_DRAWS`` draws there is
    no tail to fit either: k-hat is NaN (unknown).
    """
    log_w = np.asarray(log_w.detach().cpu() if isinstance(log_w, torch.Tensor) else log_w, dtype=np.float64)
    if log_w.shape[-1] < MIN_KHAT_DRAWS:
        return np.full(log_w.shape[:-1], np.nan)
    psislw, sign = _psis_backend()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")  # ArviZ warns on large k-hat; the caller reports it
        _, khat = psislw(sign * log_w)
    khat = np.array(khat, dtype=np.float64)
    constant = np.ptp(log_w, axis=-1) < 1e-8
    return np.where(constant, -np.inf, khat)


def unit_variances(encoder_means: torch.Tensor) -> torch.Tensor:
    """A_d = Var_x( E_q[z_d | x] ) for each latent dim d; ``encoder_means`` is [N, D]."""
    return encoder_means.double().var(dim=0)


def active_units(encoder_means: torch.Tensor, threshold: float = AU_THRESHOLD) -> int:
    """Number of latent dims whose encoder mean varies across data with variance > ``threshold``
    (Burda et al. 2016); ``encoder_means`` is [N, D]."""
    return int((unit_variances(encoder_means) > threshold).sum())


def bits_per_dim(log_px_nats, data_dim: int):
    """-log p(x) / (D ln 2): nats per datapoint to bits per dimension (float, array or tensor)."""
    return -log_px_nats / (data_dim * math.log(2))
