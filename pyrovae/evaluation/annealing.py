"""Annealed importance sampling (AIS) with Hamiltonian Monte Carlo transitions, in pure PyTorch.

For one datapoint x, anneal from a normalized start density q(z) to the unnormalized target
p(x, z) along the geometric path

    f_t(z) ∝ q(z)^(1 - β_t) p(x, z)^(β_t),        0 = β_0 < β_1 < ... < β_T = 1.

With z_0 ~ q and z_t drawn from z_{t-1} by an MCMC kernel that leaves f_t invariant,

    log w = Σ_{t=1}^T (β_t - β_{t-1}) ℓ(z_{t-1}),      ℓ(z) = log p(x, z) - log q(z),

and E[w] = p(x) (Neal 2001, "Annealed importance sampling"): log w is a stochastic lower bound
(E[log w] ≤ log p(x)) and the log-mean-exp of w over independent chains a consistent estimate.
The same recursion with the schedule reversed (β from 1 down to 0), started from an exact
posterior sample z_0 ~ p(z | x), gives E[w_rev] = 1 / p(x), so -log w_rev is a stochastic upper
bound: the bidirectional Monte Carlo (BDMC) sandwich of Grosse, Ghahramani & Adams (2015),
"Sandwiching the marginal likelihood using bidirectional Monte Carlo", used by Wu, Burda,
Salakhutdinov & Grosse (2017), "On the quantitative analysis of decoder-based generative models".

The transitions are Hamiltonian Monte Carlo (Neal 2011, "MCMC using Hamiltonian dynamics") with
identity mass and L leapfrog steps on the potential

    U_β(z) = -((1 - β) log q(z) + β log p(x, z)),

whose gradient is linear in β. A :class:`ChainState` therefore caches log q, log p and both
gradients at the current state; they serve every β, and the last leapfrog position of an accepted
proposal is the next transition's start. One call of ``log_densities`` (a decoder forward and
backward pass in a VAE) is the unit of cost: ``anneal`` makes exactly 1 + T·L of them.

Shapes: a batch of independent chains z [C, B, D] (C chains per point, B points, D flat latent
dimensions); everything per chain, step sizes included, is [C, B]. ``log_densities`` must treat
chains independently (no batch statistics across them): gradients are those of the sums over
[C, B]. Only the loops over transitions and leapfrog steps are Python loops, and no history of
states is kept, so memory does not grow with T.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..core.errors import UsageError, option
from ..core.traces import log_mean_exp  # noqa: F401  (re-exported: the estimate from the chains' log weights)

LogDensities = Callable[[Tensor], tuple[Tensor, Tensor]]
"""z [C, B, D] -> (log q(z), log p(x, z)), each [C, B] and differentiable in z."""

Noise = Callable[[int, tuple[int, ...]], Tensor]
"""(transition index t in 1..T, shape) -> a tensor of that shape (standard normal or uniform)."""

TARGET_ACCEPT = 0.65
STEP_SIZE_UP, STEP_SIZE_DOWN = 1.02, 0.98   # Wu et al. (2017) and Cremer et al. (2018) code
STEP_SIZE_MIN, STEP_SIZE_MAX = 1e-4, 0.5
JITTER = 0.4   # ε drawn uniformly from [0.6 ε, 1.4 ε] per transition and chain when jittered (Neal 2011, 5.4.2.2)


# ---------------------------------------------------------------------------- schedule

def sigmoid_schedule(steps: int, radius: float = 4.0) -> Tensor:
    """Betas β_0..β_T (T = ``steps``), float64, from exactly 0 to exactly 1:

        β_t = (σ(s_t) - σ(-r)) / (σ(r) - σ(-r)),    s_t = -r + 2 r t / T,

    the sigmoid schedule of Grosse et al. (2015) and Wu et al. (2017): small steps at both ends,
    where the intermediate distributions change fastest in log-weight terms.
    """
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise UsageError(f"{option('steps')} must be a whole number >= 1, got {steps!r}")
    if not radius > 0 or not math.isfinite(radius):
        raise UsageError(f"{option('radius')} must be positive and finite, got {radius!r}")
    s = torch.sigmoid(torch.linspace(-radius, radius, int(steps) + 1, dtype=torch.float64))
    betas = (s - s[0]) / (s[-1] - s[0])
    betas[0], betas[-1] = 0.0, 1.0
    return betas


# ---------------------------------------------------------------------------- HMC

def _geometric(at_0: Tensor, at_1: Tensor, beta: float) -> Tensor:
    """(1 - β) a + β b, with exact endpoints: at β ∈ {0, 1} the unused term is dropped, so an
    infinite or NaN value there (0 · inf = NaN) cannot leak in."""
    if beta == 0.0:
        return at_0
    if beta == 1.0:
        return at_1
    return (1.0 - beta) * at_0 + beta * at_1


@dataclass(frozen=True)
class ChainState:
    """One position per chain with its cached densities: z [C, B, D]; log_q, log_p [C, B]
    (dtype of ``log_densities``' output); grad_log_q, grad_log_p [C, B, D]. All detached."""

    z: Tensor
    log_q: Tensor
    log_p: Tensor
    grad_log_q: Tensor
    grad_log_p: Tensor

    def log_f(self, beta: float) -> Tensor:
        """log f_β(z) = (1 - β) log q(z) + β log p(x, z), float64 [C, B]."""
        return _geometric(self.log_q.double(), self.log_p.double(), beta)

    def grad_log_f(self, beta: float) -> Tensor:
        """∇_z log f_β(z) = -∇U_β(z) = (1 - β) ∇log q + β ∇log p, [C, B, D]."""
        return _geometric(self.grad_log_q, self.grad_log_p, beta)

    def log_ratio(self) -> Tensor:
        """ℓ(z) = log p(x, z) - log q(z), float64 [C, B]: the AIS log-weight increment per unit β."""
        return self.log_p.double() - self.log_q.double()

    def where(self, mask: Tensor, other: ChainState) -> ChainState:
        """This state where ``mask`` [C, B] is true, ``other`` elsewhere."""
        m = mask.unsqueeze(-1)
        return ChainState(torch.where(m, self.z, other.z),
                          torch.where(mask, self.log_q, other.log_q),
                          torch.where(mask, self.log_p, other.log_p),
                          torch.where(m, self.grad_log_q, other.grad_log_q),
                          torch.where(m, self.grad_log_p, other.grad_log_p))


def _grad(out: Tensor, z: Tensor, retain_graph: bool) -> Tensor:
    """∂ Σ out / ∂z, zeros when ``out`` does not depend on z."""
    if not out.requires_grad:
        return torch.zeros_like(z)
    (g,) = torch.autograd.grad(out.sum(), z, retain_graph=retain_graph, allow_unused=True)
    return torch.zeros_like(z) if g is None else g


def evaluate_state(log_densities: LogDensities, z: Tensor) -> ChainState:
    """One call of ``log_densities`` at z [C, B, D], with both gradients (by autograd, even when
    the caller is under ``no_grad`` or ``inference_mode``)."""
    with torch.inference_mode(False), torch.enable_grad():
        z = (z.clone() if z.is_inference() else z).detach().requires_grad_(True)
        log_q, log_p = log_densities(z)
        for name, value in (("log_q", log_q), ("log_p", log_p)):
            if not isinstance(value, Tensor) or value.shape != z.shape[:-1]:
                raise ValueError(f"log_densities must return {name} of shape {tuple(z.shape[:-1])} "
                                 f"([chains, points]); got {getattr(value, 'shape', type(value))}")
        grad_log_q = _grad(log_q, z, retain_graph=True)
        grad_log_p = _grad(log_p, z, retain_graph=False)
    return ChainState(z.detach(), log_q.detach(), log_p.detach(), grad_log_q, grad_log_p)


def _kinetic(momentum: Tensor) -> Tensor:
    """K(m) = |m|² / 2 (identity mass), float64 [C, B]."""
    return 0.5 * momentum.double().square().sum(-1)


def hmc_transition(log_densities: LogDensities, state: ChainState, beta: float, step_size: Tensor, *,
                   leapfrog: int, momentum: Tensor, log_u: Tensor) -> tuple[ChainState, Tensor]:
    """One HMC transition leaving f_β ∝ q^(1-β) p^β invariant, for every chain at once.

    ``momentum`` [C, B, D] ~ N(0, I), ``step_size`` ε [C, B], ``log_u`` [C, B] the log of a
    uniform draw. L = ``leapfrog`` steps of the leapfrog integrator (half steps in momentum at
    both ends) propose (z', m'); with H = U_β(z) + |m|²/2 the proposal is accepted where

        log u < -ΔH = H(z, m) - H(z', m'),

    and rejected wherever H(z', m') is not finite (NaN or inf), so a bad region of the target
    cannot put NaN into the chain. Costs exactly L calls of ``log_densities``: the gradient at
    the start comes from ``state``'s cache. Returns the new state and the Metropolis acceptance
    probability min(1, exp(-ΔH)) [C, B] (float64; 0 for non-finite proposals).
    """
    if leapfrog < 1:
        raise UsageError(f"{option('leapfrog')} must be >= 1, got {leapfrog}")
    eps = step_size.unsqueeze(-1)
    m = momentum + 0.5 * eps * state.grad_log_f(beta)
    z, proposal = state.z, state
    for step in range(leapfrog):
        z = z + eps * m
        proposal = evaluate_state(log_densities, z)
        m = m + (eps if step < leapfrog - 1 else 0.5 * eps) * proposal.grad_log_f(beta)
    h_start = _kinetic(momentum) - state.log_f(beta)
    h_end = _kinetic(m) - proposal.log_f(beta)
    # h_start = +inf (a start outside the support) accepts any finite proposal; a NaN or
    # infinite h_end is rejected even when log u = -inf
    valid = torch.isfinite(h_end) & ~torch.isnan(h_start)
    log_accept = torch.where(valid, (h_start - h_end).clamp(max=0.0), -math.inf)
    accept = valid & (log_u < log_accept)
    return proposal.where(accept, state), log_accept.exp()


def adapt_step_size(step_size: Tensor, accept_prob: Tensor, target: float = TARGET_ACCEPT,
                    bounds: tuple[float, float] = (STEP_SIZE_MIN, STEP_SIZE_MAX)) -> Tensor:
    """ε ← clamp(ε · (1.02 if α > target else 0.98), 1e-4, 0.5) per chain: the multiplicative
    rule, factors and bounds of Wu et al. (2017)'s and Cremer et al. (2018)'s code, compared here
    with α = min(1, exp(-ΔH)), the Metropolis acceptance probability of this transition.

    The probability, not this transition's 0/1 accept indicator: with the indicator the rule
    ignores the target (any target in (0, 1) gives the same update) and ε drifts to where the
    acceptance rate is log(1/0.98) / log(1.02/0.98) ≈ 0.505; with α, ε settles where
    P(α > target) = 1/2, i.e. the median acceptance probability is the target. α is also the
    indicator's conditional mean, so it is the less noisy signal of the two.
    """
    factor = torch.where(accept_prob > target, STEP_SIZE_UP, STEP_SIZE_DOWN).to(step_size.dtype)
    return (step_size * factor).clamp(*bounds)


# ---------------------------------------------------------------------------- AIS

@dataclass
class Annealed:
    """The chains after :func:`anneal`, per chain and point.

    log_w: [C, B] float64 log importance weights (forward: :func:`log_mean_exp` over chains estimates
        log p(x) from below in expectation; reverse: -log_mean_exp bounds it from above).
    z: [C, B, D] final states (forward: approximate posterior samples).
    log_q, log_p: [C, B] densities at ``z``.
    step_size: [C, B] final step sizes (feed them to a next run).
    accept_rate: [C, B] float64 mean Metropolis acceptance probability over the transitions.
    transitions: T; evaluations: calls of ``log_densities`` (1 + T·L).
    step_sizes: [T, C, B] the step size of every chain after each transition t = 1..T (with
        ``record_step_sizes``; else None): a tuning round's step size per temperature.
    """

    log_w: Tensor
    z: Tensor
    log_q: Tensor
    log_p: Tensor
    step_size: Tensor
    accept_rate: Tensor
    transitions: int
    evaluations: int
    step_sizes: Optional[Tensor] = None


def _as_betas(betas: Union[Tensor, Sequence[float]]) -> list[float]:
    b = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
    if b.dim() != 1 or b.numel() < 2:
        raise UsageError(f"{option('betas')} must be 1-D with at least 2 entries, got shape {tuple(b.shape)}")
    if not bool(torch.all((b >= 0) & (b <= 1))):
        raise UsageError(f"{option('betas')} must lie in [0, 1]")
    return b.tolist()


def _as_step_size(step_size: Union[float, Tensor], z0: Tensor) -> Tensor:
    eps = torch.as_tensor(step_size).to(device=z0.device, dtype=z0.dtype)
    eps = eps.broadcast_to(z0.shape[:-1]).clone()
    if not bool(torch.all(eps > 0)):
        raise UsageError(f"{option('step_size')} must be positive")
    return eps


def _as_step_scale(step_scale: Union[Tensor, Sequence[float], None], steps: int, adapt: bool) -> Optional[list[float]]:
    if step_scale is None:
        return None
    if adapt:
        raise UsageError(f"{option('step_scale')} fixes the step size of every transition; it cannot be adapted "
                         f"as well: pass {option('adapt', False)}")
    scale = torch.as_tensor(step_scale, dtype=torch.float64).detach().cpu()
    if scale.shape != (steps,) or not bool(torch.all(torch.isfinite(scale) & (scale > 0))):
        raise UsageError(f"{option('step_scale')} must hold {steps} positive finite numbers (one per transition), "
                         f"got shape {tuple(scale.shape)}")
    return scale.tolist()


def _global_noise(draw: Callable[..., Tensor], dtype: torch.dtype, device: torch.device) -> Noise:
    """``draw`` (torch.randn or torch.rand) from torch's global generator, ignoring t."""
    def noise(t: int, size: tuple[int, ...]) -> Tensor:
        return draw(size, dtype=dtype, device=device)
    return noise


def anneal(log_densities: LogDensities, z0: Tensor, betas: Union[Tensor, Sequence[float]], *,
           leapfrog: int = 5, step_size: Union[float, Tensor] = 0.01,
           randn: Optional[Noise] = None, rand: Optional[Noise] = None,
           target_accept: float = TARGET_ACCEPT, adapt: bool = True,
           log0: Union[float, Tensor, None] = None,
           progress: Optional[Callable[[int, int], None]] = None,
           step_scale: Union[Tensor, Sequence[float], None] = None,
           record_step_sizes: bool = False, jitter: Optional[Noise] = None) -> Annealed:
    """Annealed importance sampling from z0 [C, B, D] along ``betas`` β_0..β_T:

        log w = log0 + Σ_{t=1}^T (β_t - β_{t-1}) ℓ(z_{t-1}),   z_t = HMC_{β_t}(z_{t-1}),

    with ℓ = log p(x, z) - log q(z) from ``log_densities``. Forward AIS: β from 0 to 1 (e.g.
    :func:`sigmoid_schedule`), z0 ~ q; then E[w] = p(x) (Neal 2001). Reverse AIS (BDMC, Grosse
    et al. 2015): β from 1 to 0, z0 an exact posterior sample; then E[w] = 1 / p(x). Any sequence
    in [0, 1] is accepted (a run can be split in segments: pass the last result's z, step_size
    and log_w as z0, step_size and log0; each segment costs one more evaluation, and its t restarts
    at 1); transitions where β does not change add nothing to log w.

    ``randn(t, (C, B, D))`` gives the momenta and ``rand(t, (C, B))`` the uniforms of the accept
    test of transition t = 1..T (default: torch's global generator); a caller that seeds them per
    tile of (chain, point) gets results that do not depend on how points are batched.
    ``step_size``: a float or a [C, B] tensor; with ``adapt`` it is updated after every transition
    by :func:`adapt_step_size` toward ``target_accept``. Note that adaptation makes each chain's
    kernel depend on its own past, which voids the proof of E[w] = p(x); the resulting bias is
    small in practice (below the Monte Carlo error in this package's Gaussian tests; Wu et al.
    and Cremer et al. also adapt during the run), and ``adapt=False`` with step sizes from a
    pilot run restores exactness. ``step_scale`` [T] (with ``adapt=False``): transition t uses
    ``step_size · step_scale[t-1]``, a step size per temperature fixed before the run (tuned in a
    first round, Huang et al. 2020), so that every transition is a fixed kernel.
    ``record_step_sizes`` keeps every chain's step size after each transition (the tuning round:
    :attr:`Annealed.step_sizes`). ``jitter(t, (C, B))``, uniform draws u, makes transition t use
    ε (1 + ``JITTER`` (2u - 1)) instead of ε: a step size drawn independently of the state keeps
    each transition a fixed f_β-invariant kernel (a mixture of HMC kernels), and breaks the
    periodic trajectories a fixed ε·L can fall into on near-Gaussian targets, which leave chains
    where they started (Neal 2011, section 5.4.2.2); recorded and adapted step sizes are the
    centres ε. ``progress(t, T)`` is called after every transition.

    log w is accumulated in float64 whatever z's dtype; z, log densities and step sizes keep
    theirs. Costs 1 + T·L calls of ``log_densities``.
    """
    if z0.dim() != 3 or not z0.is_floating_point():
        raise UsageError("z0 must be a floating [chains, points, dim] tensor, "
                         f"got {z0.dtype} {tuple(z0.shape)}")
    if not 0.0 < target_accept < 1.0:
        raise UsageError(f"{option('target_accept')} must lie in (0, 1), got {target_accept}")
    if leapfrog < 1:
        raise UsageError(f"{option('leapfrog')} must be >= 1, got {leapfrog}")
    beta = _as_betas(betas)
    steps = len(beta) - 1
    shape, device = tuple(z0.shape), z0.device
    if randn is None:
        randn = _global_noise(torch.randn, z0.dtype, device)
    if rand is None:
        rand = _global_noise(torch.rand, torch.float64, device)

    scale = _as_step_scale(step_scale, steps, adapt)
    with torch.no_grad():
        eps = base = _as_step_size(step_size, z0)
        history = [] if record_step_sizes else None
        log_w = torch.zeros(shape[:-1], dtype=torch.float64, device=device)
        if log0 is not None:
            log_w = log_w + torch.as_tensor(log0, dtype=torch.float64, device=device).broadcast_to(shape[:-1])
        accept_sum = torch.zeros_like(log_w)
        state = evaluate_state(log_densities, z0)
        for t in range(1, steps + 1):
            d_beta = beta[t] - beta[t - 1]
            if d_beta != 0.0:
                log_w = log_w + d_beta * state.log_ratio()
            momentum = randn(t, shape).to(device=device, dtype=z0.dtype)
            log_u = torch.log(rand(t, shape[:-1]).to(device=device, dtype=torch.float64))
            if scale is not None:
                eps = base * scale[t - 1]
            used = eps if jitter is None else \
                eps * (1 + JITTER * (2 * jitter(t, shape[:-1]).to(device=device, dtype=eps.dtype) - 1))
            state, accept_prob = hmc_transition(log_densities, state, beta[t], used, leapfrog=leapfrog,
                                                momentum=momentum, log_u=log_u)
            accept_sum += accept_prob
            if adapt:
                eps = adapt_step_size(eps, accept_prob, target_accept)
            if history is not None:
                history.append(eps)
            if progress is not None:
                progress(t, steps)
    return Annealed(log_w=log_w, z=state.z, log_q=state.log_q, log_p=state.log_p, step_size=eps,
                     accept_rate=accept_sum / steps, transitions=steps,
                     evaluations=1 + steps * leapfrog,
                     step_sizes=None if history is None else torch.stack(history))
