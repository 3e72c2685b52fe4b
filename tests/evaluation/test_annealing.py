"""Annealed importance sampling (pyrovae.evaluation.annealing) against closed forms.

Targets are Gaussians, whose normalizers and moments are known, so every statistical check has
a tolerance of a few standard errors (estimated from the same draws); all seeds are fixed.
"""
import math
from functools import lru_cache

import pytest
import torch

from pyrovae.evaluation.annealing import (
    ChainState,
    adapt_step_size,
    anneal,
    evaluate_state,
    hmc_transition,
    log_mean_exp,
    sigmoid_schedule,
)

F64 = torch.float64
LOG_2PI = math.log(2 * math.pi)
Z = 4.0   # tolerance in standard errors


class Gaussians:
    """B targets p(x_b, z) = c_b N(z; μ_b, Σ_b), Σ_b = A_b A_bᵀ, and the start q = N(0, I), in 3-D."""

    def __init__(self, mu, scale_tril, log_c):
        self.mu = torch.tensor(mu, dtype=F64)
        self.A = torch.tensor(scale_tril, dtype=F64)
        self.log_c = torch.tensor(log_c, dtype=F64)
        self.cov = self.A @ self.A.mT
        self.precision = torch.cholesky_inverse(self.A)
        self.log_det = 2 * torch.log(torch.diagonal(self.A, dim1=-2, dim2=-1)).sum(-1)
        self.dim = self.mu.shape[-1]

    def log_densities(self, z):
        d = z - self.mu.to(z.dtype)
        quad = torch.einsum("cbi,bij,cbj->cb", d, self.precision.to(z.dtype), d)
        log_q = -0.5 * z.square().sum(-1) - 0.5 * self.dim * LOG_2PI
        log_p = self.log_c.to(z.dtype) - 0.5 * (quad + self.log_det.to(z.dtype) + self.dim * LOG_2PI)
        return log_q, log_p

    def sample(self, chains):
        """Exact draws from the normalized targets, [chains, B, D]."""
        eps = torch.randn(chains, *self.mu.shape, 1, dtype=F64)
        return self.mu + (self.A @ eps).squeeze(-1)


PROBLEM = Gaussians(mu=[[1.0, -0.5, 0.5], [-1.5, 0.0, 1.0]],
                    scale_tril=[[[0.8, 0.0, 0.0], [0.4, 0.6, 0.0], [-0.3, 0.2, 1.2]],
                                [[1.3, 0.0, 0.0], [-0.5, 0.5, 0.0], [0.2, 0.1, 0.7]]],
                    log_c=[-3.7, 2.1])


def log_mean_exp_se(log_w):
    """Delta-method SE of log mean_k w_k over dim 0: sd(w) / (mean(w) √K)."""
    w = torch.exp(log_w - log_w.max(0).values)
    return w.std(0) / (w.mean(0) * math.sqrt(log_w.shape[0]))


def mean_se(x):
    return x.mean(0), x.std(0) / math.sqrt(x.shape[0])


# ---------------------------------------------------------------------------- schedule, helpers

@pytest.mark.parametrize("steps", [1, 2, 10, 1000])
def test_sigmoid_schedule_runs_monotonically_from_exactly_0_to_exactly_1(steps):
    betas = sigmoid_schedule(steps)
    assert betas.dtype == F64 and betas.shape == (steps + 1,)
    assert betas[0].item() == 0.0 and betas[-1].item() == 1.0
    assert torch.all(betas[1:] > betas[:-1])
    # symmetric about the midpoint, with its smallest steps at the ends
    assert torch.allclose(betas + betas.flip(0), torch.ones_like(betas), atol=1e-12)
    if steps >= 10:
        d = betas.diff()
        assert d[0] < d[steps // 2] and d[-1] < d[steps // 2]


def test_sigmoid_schedule_rejects_bad_arguments():
    for steps in (0, -3, 2.5):
        with pytest.raises(ValueError):
            sigmoid_schedule(steps)
    with pytest.raises(ValueError):
        sigmoid_schedule(10, radius=0.0)


def test_log_mean_exp_is_stable_and_treats_minus_inf_as_zero_weight():
    log_w = torch.tensor([[1000.0, -math.inf], [1000.0 + math.log(3), -math.inf]], dtype=F64)
    assert torch.allclose(log_mean_exp(log_w), torch.tensor([1000.0 + math.log(2), -math.inf], dtype=F64))
    assert log_mean_exp(log_w, dim=1, keepdim=True).shape == (2, 1)


# ---------------------------------------------------------------------------- HMC invariance

def test_hmc_at_fixed_beta_leaves_the_gaussian_target_invariant():
    """Chains started from the exact target stay distributed as the target after 30 transitions
    of fixed step size (mean and covariance within 4 SE), while actually moving."""
    torch.manual_seed(1)
    chains, steps = 2000, 30
    z0 = PROBLEM.sample(chains)
    result = anneal(PROBLEM.log_densities, z0, torch.ones(steps + 1, dtype=F64), leapfrog=5,
                    step_size=0.25, adapt=False)
    assert torch.all(result.log_w == 0)          # β never changes: nothing is added to log w
    assert torch.all(result.step_size == 0.25)   # adapt=False
    assert 0.6 < result.accept_rate.mean() < 1.0
    z = result.z
    for b in range(2):
        mu, cov = PROBLEM.mu[b], PROBLEM.cov[b]
        d = z[:, b] - mu
        mean, se = mean_se(d)
        assert torch.all(mean.abs() < Z * se), (b, mean, se)
        for i in range(3):
            for j in range(i + 1):
                prod = d[:, i] * d[:, j]
                se_ij = math.sqrt((cov[i, i] * cov[j, j] + cov[i, j] ** 2) / chains)
                assert abs(prod.mean() - cov[i, j]) < Z * se_ij, (b, i, j, prod.mean(), cov[i, j])
        # the chains mixed: end points nearly uncorrelated with start points
        corr = torch.corrcoef(torch.stack([z0[:, b, 0], z[:, b, 0]]))[0, 1]
        assert abs(corr) < 0.3, corr


# ---------------------------------------------------------------------------- AIS on Gaussians

@lru_cache(maxsize=None)
def gaussian_run(steps, reverse=False, adapt=False, chains=500):
    """Forward AIS (z0 ~ q) or reverse AIS (z0 exact posterior draws, betas reversed)."""
    torch.manual_seed(1000 + 2 * steps + reverse)
    betas = sigmoid_schedule(steps)
    if reverse:
        z0, betas = PROBLEM.sample(chains), betas.flip(0)
    else:
        z0 = torch.randn(chains, 2, 3, dtype=F64)
    return anneal(PROBLEM.log_densities, z0, betas, leapfrog=3, step_size=0.3, adapt=adapt)


@pytest.mark.parametrize("steps,adapt", [(10, False), (200, False), (200, True)])
def test_ais_estimates_the_normalizer_of_a_gaussian(steps, adapt):
    forward = gaussian_run(steps, adapt=adapt)
    assert forward.log_w.dtype == F64 and forward.log_w.shape == (500, 2)
    estimate, se = log_mean_exp(forward.log_w), log_mean_exp_se(forward.log_w)
    assert torch.all((estimate - PROBLEM.log_c).abs() < Z * se), (estimate, PROBLEM.log_c, se)
    assert torch.all(se < (0.25 if steps == 10 else 0.05))   # the tolerance is not vacuous


def test_forward_and_reverse_ais_sandwich_log_c_and_the_gap_shrinks_with_T():
    """E[log w] ≤ log c ≤ -E[log w_rev] (Grosse et al. 2015), and the sandwich tightens with T."""
    gaps = {}
    for steps in (10, 200):
        forward, reverse = gaussian_run(steps), gaussian_run(steps, reverse=True)
        lower, se_lower = mean_se(forward.log_w)
        upper, se_upper = mean_se(-reverse.log_w)
        assert torch.all(lower < PROBLEM.log_c + Z * se_lower), (steps, lower)
        assert torch.all(upper > PROBLEM.log_c - Z * se_upper), (steps, upper)
        gaps[steps] = (upper - lower, torch.sqrt(se_lower ** 2 + se_upper ** 2))
    (gap10, se10), (gap200, se200) = gaps[10], gaps[200]
    assert torch.all(gap10 > Z * se10)                       # a real gap at T = 10
    assert torch.all(gap200 > -Z * se200)                    # never negative beyond noise
    assert torch.all(gap10 - gap200 > Z * torch.sqrt(se10 ** 2 + se200 ** 2)), (gap10, gap200)
    assert torch.all(gap200 < 0.25 * gap10)


def test_float32_states_accumulate_log_w_in_float64():
    torch.manual_seed(3)
    z0 = torch.randn(400, 2, 3, dtype=torch.float32)
    result = anneal(PROBLEM.log_densities, z0, sigmoid_schedule(50), leapfrog=3, step_size=0.3)
    assert result.log_w.dtype == F64
    assert result.z.dtype == result.step_size.dtype == result.log_p.dtype == torch.float32
    estimate, se = log_mean_exp(result.log_w), log_mean_exp_se(result.log_w)
    assert torch.all((estimate - PROBLEM.log_c).abs() < Z * se + 1e-3), (estimate, se)


def test_results_do_not_depend_on_how_points_are_batched_when_noise_is_seeded_per_point():
    """No cross-talk between chains or points: with noise seeded by (transition, point), the
    points annealed together equal the points annealed one at a time."""
    def seeded(draw, stream, points):
        def noise(t, shape):
            gens = [torch.Generator().manual_seed(1_000_003 * stream + 1009 * t + b) for b in points]
            return torch.stack([draw(shape[:1] + shape[2:], generator=g, dtype=F64) for g in gens], 1)
        return noise

    torch.manual_seed(4)
    z0 = torch.randn(50, 2, 3, dtype=F64)
    betas = sigmoid_schedule(20)
    together = anneal(PROBLEM.log_densities, z0, betas, leapfrog=2, step_size=0.2,
                      randn=seeded(torch.randn, 0, [0, 1]), rand=seeded(torch.rand, 1, [0, 1]))
    for b in range(2):
        alone_problem = Gaussians(PROBLEM.mu[b:b + 1].tolist(), PROBLEM.A[b:b + 1].tolist(),
                                  PROBLEM.log_c[b:b + 1].tolist())
        alone = anneal(alone_problem.log_densities, z0[:, b:b + 1], betas, leapfrog=2, step_size=0.2,
                       randn=seeded(torch.randn, 0, [b]), rand=seeded(torch.rand, 1, [b]))
        for field in ("log_w", "z", "step_size", "accept_rate"):
            torch.testing.assert_close(getattr(alone, field), getattr(together, field)[:, b:b + 1],
                                       rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------- cost

def test_anneal_calls_log_densities_exactly_1_plus_T_times_L_times():
    calls, shapes, ticks = [], set(), []

    def counted(z):
        calls.append(z.requires_grad)
        shapes.add(tuple(z.shape))
        return PROBLEM.log_densities(z)

    z0 = torch.randn(7, 2, 3, dtype=F64, requires_grad=True)   # a graph the run must not extend
    with torch.no_grad():                                      # gradients are taken regardless
        result = anneal(counted, z0 * 1.0, sigmoid_schedule(6), leapfrog=4,
                        progress=lambda t, total: ticks.append((t, total)))
    assert len(calls) == result.evaluations == 1 + 6 * 4
    assert all(calls) and shapes == {(7, 2, 3)}
    assert ticks == [(t, 6) for t in range(1, 7)]
    assert result.transitions == 6
    assert not result.z.requires_grad and not result.log_w.requires_grad
    assert torch.isfinite(result.log_w).all()


def test_anneal_works_under_inference_mode():
    z0 = torch.randn(5, 2, 3, dtype=F64)
    with torch.inference_mode():
        result = anneal(PROBLEM.log_densities, z0, sigmoid_schedule(3), leapfrog=2)
    assert torch.isfinite(result.log_w).all() and result.evaluations == 7


# ---------------------------------------------------------------------------- step sizes

def narrow_and_wide(scales):
    """Point b: target N(0, scales[b]² I) in 3-D; log_q = N(0, I)."""
    s = torch.tensor(scales, dtype=F64)

    def log_densities(z):
        log_q = -0.5 * z.square().sum(-1)
        log_p = -0.5 * (z / s.to(z.dtype)[:, None]).square().sum(-1)
        return log_q, log_p
    return s, log_densities


def test_step_size_adaptation_moves_toward_the_target_acceptance_per_chain_and_point():
    torch.manual_seed(5)
    scales, log_densities = narrow_and_wide([1.0, 0.01])
    chains = 200
    z0 = torch.randn(chains, 2, 3, dtype=F64) * scales[:, None]
    eps0 = torch.tensor([1e-3, 0.5], dtype=F64).expand(chains, 2)
    ones = torch.ones(301, dtype=F64)
    first = anneal(log_densities, z0, ones, leapfrog=5, step_size=eps0)
    # point 0: small steps on a unit Gaussian are accepted with α > 0.65: ×1.02 (nearly) every time
    assert torch.all(first.step_size[:, 0] > 0.3) and first.accept_rate[:, 0].mean() > 0.95
    # point 1: steps 50 sd long are rejected, and shrink until α straddles the target
    assert torch.all(first.step_size[:, 1] < 0.05)
    second = anneal(log_densities, first.z, ones[:101], leapfrog=5, step_size=first.step_size)
    assert abs(second.accept_rate[:, 1].mean() - 0.65) < 0.1, second.accept_rate[:, 1].mean()
    # ... with step sizes of the target's scale σ = 0.01, below the leapfrog's stability limit 2σ
    assert 0.005 < second.step_size[:, 1].median() < 0.02
    for result in (first, second):
        assert torch.all((result.step_size >= 1e-4) & (result.step_size <= 0.5))


def test_step_sizes_grow_geometrically_then_stop_at_the_bounds():
    torch.manual_seed(6)
    scales, log_densities = narrow_and_wide([1e3, 1e-7])
    z0 = torch.randn(20, 2, 3, dtype=F64) * scales[:, None]
    ones = torch.ones(11, dtype=F64)
    short = anneal(log_densities, z0, ones, leapfrog=1, step_size=1e-3)
    expected = torch.tensor([1e-3 * 1.02 ** 10, 1e-3 * 0.98 ** 10], dtype=F64)
    torch.testing.assert_close(short.step_size, expected.expand(20, 2))
    long = anneal(log_densities, z0, torch.ones(401, dtype=F64), leapfrog=1, step_size=1e-3)
    assert torch.all(long.step_size[:, 0] == 0.5) and torch.all(long.step_size[:, 1] == 1e-4)


def test_no_adaptation_keeps_per_chain_step_sizes():
    torch.manual_seed(7)
    eps = torch.rand(9, 2, dtype=F64) * 0.3 + 0.01
    result = anneal(PROBLEM.log_densities, torch.randn(9, 2, 3, dtype=F64), sigmoid_schedule(5),
                    step_size=eps, adapt=False)
    assert torch.equal(result.step_size, eps)


def test_adapt_step_size_uses_the_acceptance_probability_against_the_target():
    eps = torch.tensor([0.1, 0.1, 0.1, 0.499, 1.01e-4], dtype=F64)
    alpha = torch.tensor([0.9, 0.65, 0.1, 1.0, 0.0], dtype=F64)
    new = adapt_step_size(eps, alpha, target=0.65)
    torch.testing.assert_close(new, torch.tensor([0.102, 0.098, 0.098, 0.5, 1e-4], dtype=F64))


# ---------------------------------------------------------------------------- non-finite targets

def truncated_log_densities(mu0, outside):
    """log p = N(z; (mu0, 0, 0), I) on z_0 ≤ 0 and ``outside`` (-inf or NaN) elsewhere, with NaN
    gradients outside (the torch.where pitfall); log q = N(0, I)."""
    def log_densities(z):
        inside = z[..., 0] <= 0
        root = torch.sqrt(-z[..., 0])
        gauss = -0.5 * (z - torch.tensor([mu0, 0.0, 0.0], dtype=z.dtype)).square().sum(-1) - 1.5 * LOG_2PI
        log_p = torch.where(inside, gauss + root - root, outside)
        return -0.5 * z.square().sum(-1) - 1.5 * LOG_2PI, log_p
    return log_densities


def test_ais_rejects_proposals_of_infinite_energy_and_estimates_a_truncated_normalizer():
    """p(z) = N(z; μ, I) 1[z_0 ≤ 0] has normalizer Φ(-μ_0); proposals into z_0 > 0 (log p = -inf,
    gradient NaN) must be rejected, and no NaN may appear anywhere."""
    torch.manual_seed(8)
    mu0 = 0.5
    log_densities = truncated_log_densities(mu0, -math.inf)
    result = anneal(log_densities, torch.randn(1000, 1, 3, dtype=F64), sigmoid_schedule(30),
                    leapfrog=3, step_size=0.3)
    for field in ("log_w", "z", "log_q", "log_p", "step_size", "accept_rate"):
        assert not torch.isnan(getattr(result, field)).any(), field
    finite = torch.isfinite(result.log_w[:, 0])
    assert 0.4 < finite.double().mean() < 0.6       # the chains that start in z_0 > 0 have w = 0
    assert torch.all(result.z[finite, 0, 0] <= 0)   # the others never left the support
    log_z = math.log(0.5 * math.erfc(mu0 / math.sqrt(2)))
    estimate, se = log_mean_exp(result.log_w)[0], log_mean_exp_se(result.log_w)[0]
    assert abs(estimate - log_z) < Z * se, (estimate, log_z, se)


def test_hmc_rejects_nan_energies_and_stays_invariant_on_a_truncated_target():
    """At β = 1 with log p = NaN outside z_0 ≤ 0: chains from the exact truncated normal keep its
    mean E[z_0] = μ - φ(μ)/Φ(-μ) and never hold NaN."""
    torch.manual_seed(9)
    mu0, chains = 0.5, 2000
    z0 = torch.randn(chains, 1, 3, dtype=F64)
    u = torch.rand(chains, dtype=F64) * (0.5 * math.erfc(mu0 / math.sqrt(2)))
    z0[:, 0, 0] = mu0 + torch.special.ndtri(u)                      # inverse-CDF draws below 0
    result = anneal(truncated_log_densities(mu0, math.nan), z0, torch.ones(21, dtype=F64),
                    leapfrog=3, step_size=0.4, adapt=False)
    assert not torch.isnan(result.z).any() and not torch.isnan(result.log_p).any()
    assert torch.all(result.z[:, 0, 0] <= 0)
    assert 0.3 < result.accept_rate.mean() < 1.0
    phi = math.exp(-0.5 * mu0 ** 2) / math.sqrt(2 * math.pi)
    truth = mu0 - phi / (0.5 * math.erfc(mu0 / math.sqrt(2)))
    mean, se = mean_se(result.z[:, 0, 0])
    assert abs(mean - truth) < Z * se, (mean, truth, se)


def test_transition_rejects_every_non_finite_proposal_and_keeps_the_cached_state():
    """hmc_transition directly: a proposal with NaN energy is rejected even when log u = -inf."""
    def log_densities(z):
        log_p = torch.where(z[..., 0] > 0.05, torch.full_like(z[..., 0], math.nan), -0.5 * z.square().sum(-1))
        return -0.5 * z.square().sum(-1), log_p

    z = torch.zeros(4, 1, 2, dtype=F64)
    state = evaluate_state(log_densities, z)
    assert isinstance(state, ChainState)
    momentum = torch.tensor([[[1.0, 0.0]], [[-1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]], dtype=F64)
    log_u = torch.full((4, 1), -math.inf, dtype=F64)
    new, alpha = hmc_transition(log_densities, state, 1.0, torch.full((4, 1), 0.1, dtype=F64), leapfrog=2,
                                momentum=momentum, log_u=log_u)
    assert torch.equal(new.z[0], z[0]) and torch.equal(new.z[3], z[3])   # went to z_0 > 0.05
    assert not torch.equal(new.z[1], z[1]) and not torch.equal(new.z[2], z[2])
    assert alpha[0].item() == 0.0 and alpha[3].item() == 0.0
    assert torch.all((alpha[1:3] > 0.9) & (alpha[1:3] <= 1))
    assert not torch.isnan(new.log_p).any()
