"""Tests of the importance-sampling estimator of log p(x) against a linear-Gaussian VAE.

The model z ~ N(0, I_d), x | z ~ N(W z + b, s² I_D) (probabilistic PCA) has
p(x) = N(b, W Wᵀ + s² I) and posterior N(μ, Σ), Σ = (I + WᵀW / s²)⁻¹, μ = Σ Wᵀ (x - b) / s².
With orthogonal columns W = Q diag(c), Σ is diagonal, so the exact posterior is a valid
(loc, scale) proposal. Everything runs in float64.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from linear_gaussian import D_LATENT, F64, LinearGaussian, linear_gaussian

from pyrovae.core.noise import noise, site_stream
from pyrovae.core.programs import LatentLayer
from pyrovae.core.vae import VAE
from pyrovae.evaluation import diagnostics
from pyrovae.evaluation.importance import IS_STREAM, estimate_log_likelihood, per_point_columns, write_per_point
from pyrovae.guides import AmortizedGuide, MeanFieldGuide
from pyrovae.models import VAEModel

def mean_and_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@pytest.fixture(scope="module")
def orthogonal():
    return linear_gaussian(orthogonal=True)


@pytest.fixture(scope="module")
def general():
    return linear_gaussian(orthogonal=False)


def exact_posterior(case: LinearGaussian, widen: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    assert torch.allclose(case.post_cov, torch.diag(case.post_cov.diagonal()), atol=1e-12)
    scale = case.post_cov.diagonal().sqrt().expand(len(case.x), D_LATENT)
    return case.post_loc, widen * scale


def test_exact_posterior_proposal_gives_exact_log_px(orthogonal):
    result = estimate_log_likelihood(orthogonal.vae, orthogonal.x, k=200, proposal=exact_posterior(orthogonal),
                                     batch_size=32, chunk_size=64)
    np.testing.assert_allclose(result.log_px, orthogonal.log_px, rtol=0, atol=1e-10)  # every weight = p(x)
    for k, bound in result.iwae.items():
        np.testing.assert_allclose(bound, orthogonal.log_px, rtol=0, atol=1e-10, err_msg=f"L_{k}")
    np.testing.assert_allclose(result.ess_frac, 1.0, rtol=1e-10)
    assert np.all(result.khat < 0.5)
    # ELBO = log p(x) - KL(q || posterior) = log p(x) when q is the posterior (up to its one-draw noise)
    err_mean, err_se = mean_and_se(result.elbo - orthogonal.log_px)
    assert abs(err_mean) < 3 * err_se
    summary = result.summary()
    assert summary["reliable"] and summary["warning"] is None and summary["active_units"] is None
    assert summary["khat_reason"] is None and summary["chunk_invariant"]
    json.dumps(summary, allow_nan=False)
    assert summary["log_likelihood"] == pytest.approx(orthogonal.log_px.mean(), abs=1e-10)


def test_widened_posterior_has_bounded_weights(orthogonal):
    """q = posterior with 1.3x the std: w = p(x) q*/q is bounded, so k-hat < 0.5 (finite variance)."""
    result = estimate_log_likelihood(orthogonal.vae, orthogonal.x, k=1000,
                                     proposal=exact_posterior(orthogonal, widen=1.3), chunk_size=500)
    assert np.all(result.khat < 0.5)
    assert 0.5 < result.ess_frac.mean() < 0.99
    # closed form: per dim, E_q[(p/q)²] = ∫ p²/q = c² / sqrt(2c² - 1) for q = p widened c times, so
    # ESS/K -> 1 / prod_d (c² / sqrt(2c² - 1)) = 0.8333 for c = 1.3, d = 2. The per-point ESS/K of
    # K = 1000 draws has an O(1/K) ratio bias and spread ~0.007 (SE of the mean of 100 ≈ 0.0007);
    # over seeds 0-5 the mean is within 0.0009 of the limit. One dim (0.913), c = 1.2 (0.907) or
    # c = 1.4 (0.760) would fail.
    c = 1.3
    expected_ess = 1 / (c ** 2 / math.sqrt(2 * c ** 2 - 1)) ** D_LATENT
    assert result.ess_frac.mean() == pytest.approx(expected_ess, abs=0.01)
    err_mean, err_se = mean_and_se(result.log_px - orthogonal.log_px)
    assert abs(err_mean) < 3 * err_se


def test_prior_proposal_is_consistent(general):
    result = estimate_log_likelihood(general.vae, general.x, k=4000, proposal="prior", chunk_size=1000)
    err_mean, err_se = mean_and_se(result.log_px - general.log_px)
    assert abs(err_mean) < 3 * err_se
    assert np.all(result.kl == 0)  # q = p(z)
    assert_bounds_increase(result, general.log_px)


def test_untrained_guide_proposal(general):
    """A poor proposal: log p̂ is biased low by about Var(w) / (2 K E[w]²), so only the upper
    side is tested, with the IWAE bounds ordered L_1 < L_5 < L_50 < L_K <= log p(x)."""
    result = estimate_log_likelihood(general.vae, general.x, k=4000, proposal="guide", chunk_size=1000)
    err_mean, err_se = mean_and_se(result.log_px - general.log_px)
    assert err_mean < 3 * err_se
    assert_bounds_increase(result, general.log_px)
    assert result.active_units is not None and 0 <= result.active_units["z"] <= D_LATENT
    # the count is that of the guide's means, computed directly (variances 0.043 and 0.038 against
    # the 0.01 threshold: both units active, far from a tie that float rounding could flip)
    with torch.no_grad():
        means = general.vae.guide.encode("z", general.x)[0]
    assert result.active_units == {"z": diagnostics.active_units(means)} == {"z": D_LATENT}
    # E[L̂_1] = ELBO: the grouped K=1 bound and the analytic-KL ELBO agree within noise
    diff_mean, diff_se = mean_and_se(result.iwae[1] - result.elbo)
    assert abs(diff_mean) < 3 * diff_se


def assert_bounds_increase(result, log_px: np.ndarray) -> None:
    ks = sorted(result.iwae)
    assert ks == [1, 5, 50, result.k]
    for small, large in zip(ks[:-1], ks[1:]):
        gain_mean, gain_se = mean_and_se(result.iwae[large] - result.iwae[small])
        assert gain_mean > 3 * gain_se, f"L_{large} is not above L_{small}"
    gap_mean, gap_se = mean_and_se(result.iwae[result.k] - log_px)
    assert gap_mean < 3 * gap_se


def test_results_do_not_depend_on_chunk_or_batch_size(general):
    """The noise of particle k, row i is a function of (seed, k, i) only: any chunking gives the
    same draws, so the same numbers up to float rounding. A different seed gives other draws."""
    runs = [estimate_log_likelihood(general.vae, general.x, k=300, proposal="guide", batch_size=b,
                                    chunk_size=c, seed=3) for b, c in [(100, 300), (7, 41), (32, 100)]]
    for other in runs[1:]:
        for name, column in per_point_columns(runs[0]).items():
            np.testing.assert_allclose(per_point_columns(other)[name], column, rtol=1e-10, atol=1e-10,
                                       err_msg=name)
    reseeded = estimate_log_likelihood(general.vae, general.x, k=300, proposal="guide", seed=4)
    assert not np.allclose(reseeded.log_px, runs[0].log_px)
    diff_mean, diff_se = mean_and_se(reseeded.log_px - runs[0].log_px)
    assert abs(diff_mean) < 3 * diff_se


def test_bernoulli_vae_matches_a_direct_computation():
    """The Pyro-trace pipeline (with its faster Bernoulli log-density) against plain torch on
    the same draws: log p̂(x_i) = logsumexp_k [log p(x_i | z_k) + log p(z_k) - log q(z_k | x_i)] - log K."""
    torch.manual_seed(1)
    n, k, d = 30, 64, 3
    vae = VAE(VAEModel(d, 20, hidden=(16,)), AmortizedGuide([LatentLayer("z", d, "x", (16,))], 20)).to(F64)
    x = torch.bernoulli(torch.full((n, 20), 0.3, dtype=F64))
    loc, scale = torch.randn(n, d, dtype=F64), torch.rand(n, d, dtype=F64) + 0.5
    result = estimate_log_likelihood(vae, x, k=k, proposal=(loc, scale), batch_size=11, chunk_size=40, seed=5)

    # the documented draws: a function of (seed, stream, site, particle, row)
    z = loc + scale * noise(5, IS_STREAM ^ site_stream("z"), range(k), range(n), (d,), x)
    normal = torch.distributions.Normal
    with torch.no_grad():
        log_w = (torch.distributions.Bernoulli(logits=vae.model.decoder(z)).log_prob(x).sum(-1)
                 + normal(0.0, 1.0).log_prob(z).sum(-1) - normal(loc, scale).log_prob(z).sum(-1))
    expected = torch.logsumexp(log_w, 0) - math.log(k)
    np.testing.assert_allclose(result.log_px, expected.numpy(), rtol=0, atol=1e-10)
    with pytest.raises(ValueError, match="support"):  # validated: x must be binary
        estimate_log_likelihood(vae, x * 0.5, k=8, proposal=(loc, scale))


def test_mean_field_guide_reads_its_rows(general):
    """vae.guide with a MeanFieldGuide looks up rows by the data-plate index: the same draws and
    numbers as passing its (loc, scale) table."""
    guide = MeanFieldGuide({"z": D_LATENT}, len(general.x)).to(F64)
    with torch.no_grad():
        guide.loc["z"].copy_(general.post_loc + 0.1)
        guide.log_scale["z"].fill_(-0.5)
    vae = VAE(general.vae.model, guide)
    by_guide = estimate_log_likelihood(vae, general.x, k=200, proposal="guide", batch_size=30, chunk_size=64)
    by_table = estimate_log_likelihood(vae, general.x, k=200, proposal=guide.moments()["z"], batch_size=30,
                                       chunk_size=64)
    np.testing.assert_allclose(by_guide.log_px, by_table.log_px, rtol=1e-12)
    assert by_guide.active_units is None


def test_summary_flags_heavy_tails(general):
    loc = torch.zeros(len(general.x), D_LATENT, dtype=F64) + 2.0  # far off, far too narrow
    result = estimate_log_likelihood(general.vae, general.x, k=500, proposal=(loc, torch.full_like(loc, 0.05)))
    summary = result.summary()
    assert summary["khat_frac_gt_0_7"] > 0.5 and not summary["reliable"]
    assert "k-hat" in summary["warning"]
    assert [bound["k"] for bound in summary["iwae_bounds"]] == [1, 5, 50, 500]   # in increasing k
    assert summary["iwae_bounds"][-1]["bound"] == summary["log_likelihood"]
    for key in ("log_likelihood", "log_likelihood_se", "elbo", "elbo_se", "k", "n", "khat_frac_gt_0_5",
                "ess_frac_mean", "active_units", "kl", "reconstruction", "bits_per_dim"):
        assert key in summary


def test_small_k_and_progress(general):
    calls = []
    result = estimate_log_likelihood(general.vae, general.x[:10], k=3, proposal="prior", batch_size=4,
                                     progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    assert sorted(result.iwae) == [1, 3]
    assert np.all(np.isnan(result.khat))  # too few draws for a tail fit: unknown
    summary = result.summary()
    assert summary["reliable"] is None and summary["khat_max"] is None and summary["khat_frac_gt_0_7"] is None
    assert "at least 25 draws" in summary["khat_reason"]
    json.dumps(summary, allow_nan=False)  # no inf / nan in the summary


def test_bad_proposals_are_rejected(general):
    with pytest.raises(ValueError, match="unknown proposal"):
        estimate_log_likelihood(general.vae, general.x, k=10, proposal="posterior")
    loc = torch.zeros(3, D_LATENT)
    with pytest.raises(ValueError, match=r"\[100, latent_dim\]"):
        estimate_log_likelihood(general.vae, general.x, k=10, proposal=(loc, loc + 1))


@pytest.mark.parametrize("suffix", [".csv", ".npz", ".CSV", ".Npz"])  # the CLI accepts any case
def test_write_per_point(general, tmp_path, suffix):
    result = estimate_log_likelihood(general.vae, general.x[:20], k=100, proposal="prior")
    path = write_per_point(result, tmp_path / f"points{suffix}")
    if suffix.lower() == ".csv":
        table = np.genfromtxt(path, delimiter=",", names=True)
        columns = {name: table[name] for name in table.dtype.names}
    else:
        columns = dict(np.load(path))
    expected = per_point_columns(result)
    assert set(columns) == set(expected) >= {"log_px", "elbo", "ess_frac", "khat", "iwae_1", "iwae_100"}
    for name, values in expected.items():
        np.testing.assert_allclose(columns[name], values, rtol=1e-15, err_msg=name)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind
    with pytest.raises(ValueError, match=".csv or .npz"):
        write_per_point(result, tmp_path / "points.txt")
