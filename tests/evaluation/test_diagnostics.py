"""Tests of pyrovae.diagnostics: ESS, PSIS k-hat (both ArviZ code paths), active units, bits/dim."""
from __future__ import annotations

import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from pyrovae.evaluation import diagnostics


def test_ess_of_equal_weights_is_one():
    log_w = torch.full((1000, 3), -7.5, dtype=torch.float64)
    assert torch.allclose(diagnostics.ess_fraction(log_w), torch.ones(3, dtype=torch.float64))


def test_ess_of_one_dominant_weight_is_one_over_k():
    k = 1000
    log_w = torch.zeros(k, 2, dtype=torch.float64)
    log_w[17] = 50.0  # w = e^50 against 999 weights of 1: ESS = (e^50 + 999)^2 / (e^100 + 999) ≈ 1
    assert torch.allclose(diagnostics.ess_fraction(log_w), torch.full((2,), 1 / k, dtype=torch.float64), rtol=1e-12)


def test_ess_matches_its_definition():
    log_w = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    w = log_w.exp() / log_w.exp().sum(0)
    assert torch.allclose(diagnostics.ess_fraction(log_w), 1 / (w.pow(2).sum(0) * 500))


def _pareto_log_weights(alpha: float, rows: int, k: int, seed: int = 0) -> np.ndarray:
    """log w with w ~ Pareto(x_m = 1, alpha): exceedances over any threshold are generalized
    Pareto with shape k = 1 / alpha exactly."""
    return np.log(np.random.default_rng(seed).pareto(alpha, size=(rows, k)) + 1.0)


@pytest.mark.parametrize("alpha", [4.0, 1.25])
def test_psis_khat_recovers_a_known_pareto_tail(alpha):
    khat = diagnostics.psis_khat(_pareto_log_weights(alpha, rows=20, k=10_000))
    assert khat.shape == (20,)
    se = khat.std(ddof=1) / math.sqrt(len(khat))
    # 3 SE of sampling noise plus 0.05 for the small-sample bias of the k estimator
    # (the weakly informative prior of Zhang & Stephens pulls k-hat towards 0.5)
    assert abs(khat.mean() - 1 / alpha) < 3 * se + 0.05


def test_psis_khat_accepts_one_row_and_tensors():
    log_w = _pareto_log_weights(4.0, rows=1, k=5000)[0]
    assert diagnostics.psis_khat(log_w).shape == ()
    assert diagnostics.psis_khat(torch.from_numpy(log_w)) == pytest.approx(float(diagnostics.psis_khat(log_w)))


def test_psis_khat_of_constant_weights_is_minus_infinity():
    khat = diagnostics.psis_khat(np.stack([np.full(1000, 3.0), np.random.default_rng(0).normal(size=1000)]))
    assert khat[0] == -np.inf
    assert np.isfinite(khat[1]) and khat[1] < 0.5  # lognormal weights with sigma = 1: a light tail


def test_psis_khat_is_quiet_on_heavy_tails(capfd):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning escaping the function fails the test
        khat = diagnostics.psis_khat(_pareto_log_weights(0.5, rows=3, k=2000))
    assert np.all(khat > 1.0)
    assert capfd.readouterr().err == ""


def test_psis_khat_arviz1_path_negates_the_log_ratios(monkeypatch):
    """arviz 1.x: PSIS lives in arviz-stats, whose array psislw negates its input. A fake
    arviz 1.0 + arviz_stats pair must give the same k-hat as arviz 0.x on the raw ratios."""
    import arviz

    if int(arviz.__version__.split(".")[0]) >= 1:
        pytest.skip("the reference below is the arviz 0.x psislw")
    log_w = _pareto_log_weights(1.25, rows=4, k=4000)  # heavy right tail, light left tail
    expected = diagnostics.psis_khat(log_w)
    seen = []

    def fake_psislw(ary, r_eff=1, axis=-1):  # arviz-stats: fits the right tail of -ary
        seen.append(ary)
        return arviz.psislw(-ary)

    fake_arviz = types.ModuleType("arviz")
    fake_arviz.__version__ = "1.0.0"
    fake_stats, fake_base = types.ModuleType("arviz_stats"), types.ModuleType("arviz_stats.base")
    fake_base.array_stats = types.SimpleNamespace(psislw=fake_psislw)
    fake_stats.base = fake_base
    monkeypatch.setitem(sys.modules, "arviz", fake_arviz)
    monkeypatch.setitem(sys.modules, "arviz_stats", fake_stats)
    monkeypatch.setitem(sys.modules, "arviz_stats.base", fake_base)

    khat = diagnostics.psis_khat(log_w)
    assert len(seen) == 1 and np.array_equal(seen[0], -log_w)
    np.testing.assert_allclose(khat, expected)
    assert np.all(khat > 0.6)  # the right tail; a sign slip would fit the light left tail


def test_active_units_counts_dims_with_varying_means():
    g = torch.Generator().manual_seed(0)
    spread = torch.tensor([1.0, 0.3, 0.03, 0.001, 0.0])  # variances 1, 0.09, 9e-4, 1e-6, 0
    means = torch.randn(2000, 5, generator=g) * spread + torch.tensor([0.0, 5.0, -2.0, 1.0, 3.0])
    assert diagnostics.active_units(means) == 2
    assert diagnostics.active_units(means, threshold=1e-4) == 3
    np.testing.assert_allclose(diagnostics.unit_variances(means).numpy(), spread.double().pow(2).numpy(),
                               rtol=0.15, atol=1e-12)  # 2000 draws: relative SE of a variance ≈ 3%


def test_bits_per_dim():
    assert diagnostics.bits_per_dim(-784 * math.log(2), 784) == pytest.approx(1.0)
    np.testing.assert_allclose(diagnostics.bits_per_dim(np.array([-2 * math.log(2), 0.0]), 2), [1.0, 0.0])
