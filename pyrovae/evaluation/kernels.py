"""The log densities of the evaluator's inner loop, written for fewer passes over memory and
optionally fused by ``torch.compile``.

Importance sampling spends its time on [particles, batch, pixels] tensors: the decoder's
matmuls and then one log density per pixel. In eager PyTorch every elementwise op is a pass
over that tensor (tens of MB per chunk), and torch's softplus alone cost as much as the
400 x 784 matmul. Here each density is one expression, which ``torch.compile`` turns into
one loop over its inputs.

Bernoulli with logits l and x in {0, 1}, summed over the pixels j of an event:

    log p(x | l) = Σ_j x_j l_j - softplus(l_j),   softplus(l) = max(l, 0) + log(1 + e^{-|l|}),

and log(1 + e^{-|l|}) needs an exp and a log per pixel. The logs are shared: with the pixels
laid out as [groups, lanes] (784 = 49 x 16),

    Σ_j log(1 + e^{-|l_j|}) = Σ_lanes log Π_groups (1 + e^{-|l_j|}),

a product down each lane, vectorized across lanes, and one log per lane. Every factor lies in
(1, 2] and a product has at most ``MAX_FACTORS`` = 64 of them, so it stays in [1, 2^64]: no
overflow, no underflow, and a rounding error of the order of a float sum of the same terms.

Diagonal Normal, summed over the event's last dimension:

    log N(v; μ, σ) = Σ_d -((v_d - μ_d) / σ_d)² / 2 - log σ_d - log √(2π).

:class:`FusedDensities` swaps these in for Pyro's ``Bernoulli(logits).to_event(1)`` and
``Normal.to_event(1)`` sites whose value is already set (observed, replayed or drawn by the
evaluator); every other site is left alone.
"""
from __future__ import annotations

import contextlib
import logging
import math
import warnings
from typing import Callable, Iterator

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger

from ..core.errors import option

log = logging.getLogger(__name__)

LANES, MAX_FACTORS = 16, 64  # bernoulli_log_prob: one log per lane; 2^64 fits in float32
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def bernoulli_log_prob(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Σ_j log Bernoulli(x_j; logits_j) over the last dimension."""
    shape = (-1, _lanes(logits.shape[-1]))
    logits, x = logits.unflatten(-1, shape), x.unflatten(-1, shape)
    log1p_exp = (1 + torch.exp(-logits.abs())).prod(-2).log()
    return ((x * logits - logits.clamp(min=0)).sum(-2) - log1p_exp).sum(-1)


def _lanes(size: int) -> int:
    """The fewest lanes, at least LANES (or all of ``size``), that split ``size`` evenly into
    products of at most MAX_FACTORS factors."""
    return next(lanes for lanes in range(min(LANES, size), size + 1)
                if size % lanes == 0 and size // lanes <= MAX_FACTORS)


def bernoulli_log_prob_grad(logits: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """∂/∂l of Σ_i grad_i Σ_j log Bernoulli(x_ij; l_ij) = grad_i (x_ij - σ(l_ij)): one pass."""
    return (x - torch.sigmoid(logits)) * grad.unsqueeze(-1)


class _BernoulliLogProb(torch.autograd.Function):
    """:func:`bernoulli_log_prob` with a one-pass gradient in the logits (autograd through the
    lane products would divide by every factor). For AIS, which differentiates the log joint in z
    through the decoder. (Computing the gradient in the forward pass, from the same exp, measured
    slower: it writes a [pairs, pixels] buffer the reduction alone does not.)"""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, x: torch.Tensor, compile: bool) -> torch.Tensor:
        ctx.save_for_backward(logits, x)
        ctx.compile = compile
        return _run(bernoulli_log_prob, compile, logits, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        logits, x = ctx.saved_tensors
        return _run(bernoulli_log_prob_grad, ctx.compile, logits, x, grad), None, None


def normal_log_prob(value: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Σ_d log N(value_d; loc_d, scale_d) over the last dimension."""
    u = (value - loc) / scale
    return (-0.5 * u * u - scale.log()).sum(-1) - _HALF_LOG_2PI * value.shape[-1]


_compiled: dict[Callable, Callable] = {}
_compile_failed: list[str] = []     # why torch.compile failed, once per process


def _run(kernel: Callable, compile: bool, *args: torch.Tensor) -> torch.Tensor:
    """kernel(*args), through torch.compile when asked and when compiling works here."""
    if not compile or _compile_failed:
        return kernel(*args)
    first = kernel not in _compiled
    if first:
        if not _compiled:   # the first compile of a process is a silent wait of 10-40 s: say why
            log.info(f"compiling the log densities with torch.compile (up to a minute the first time on this "
                     f"machine, seconds once its cache is warm; {option('compile', False)} skips it)")
        _compiled[kernel] = torch.compile(kernel)
    try:
        if not first:
            return _compiled[kernel](*args)
        # compiling happens on the first call; inductor's C++ toolchain lookup warns about
        # CUDA_HOME on machines without CUDA: quiet that logger for this call only
        with _quiet("torch.utils.cpp_extension"):
            return _compiled[kernel](*args)
    except Exception as error:  # no C++ compiler, an unsupported device, ...: same math, eagerly
        _compile_failed.append(f"{type(error).__name__}: {error}".splitlines()[0])
        warnings.warn(f"torch.compile failed ({_compile_failed[0]}); evaluating without it, "
                      f"which is slower but gives the same numbers", RuntimeWarning, stacklevel=2)
        return kernel(*args)


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def compile_works() -> bool:
    """False once compiling a kernel has failed in this process."""
    return not _compile_failed


class _BernoulliRows(dist.TorchDistribution):
    """Bernoulli(logits).to_event(1) with the log density of :func:`bernoulli_log_prob`."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.boolean, 1)

    def __init__(self, logits: torch.Tensor, compile: bool):
        self.logits, self.compile = logits, compile
        super().__init__(logits.shape[:-1], logits.shape[-1:])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        if self.logits.requires_grad and torch.is_grad_enabled():
            return _BernoulliLogProb.apply(self.logits, value, self.compile)
        return _run(bernoulli_log_prob, self.compile, self.logits, value)


class _DiagNormal(dist.TorchDistribution):
    """Normal(loc, scale).to_event(1) with the log density of :func:`normal_log_prob`."""

    arg_constraints: dict = {}
    support = constraints.independent(constraints.real, 1)

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor, compile: bool):
        self.loc, self.scale, self.compile = loc, scale, compile
        super().__init__(loc.shape[:-1], loc.shape[-1:])

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _run(normal_log_prob, self.compile, value, self.loc, self.scale)


class FusedDensities(Messenger):
    """Computes the log densities of Bernoulli(logits).to_event(1) and Normal.to_event(1) sites
    with the kernels above (compiled if ``compile``). Only sites whose value is set are swapped,
    so nothing is sampled from the replacements. Enter it outside the particle plate, so it acts
    after the plates have broadcast each distribution."""

    def __init__(self, compile: bool = False):
        super().__init__()
        self.compile = compile

    def _pyro_sample(self, msg) -> None:
        fn = msg["fn"]
        if msg["value"] is None or not isinstance(fn, torch.distributions.Independent) \
                or fn.reinterpreted_batch_ndims != 1:
            return
        base = fn.base_dist
        if type(base) is dist.Bernoulli and "logits" in vars(base):  # built from logits (probs is lazy)
            msg["fn"] = _BernoulliRows(base.logits, self.compile)
        elif type(base) is dist.Normal:
            msg["fn"] = _DiagNormal(base.loc, base.scale, self.compile)
