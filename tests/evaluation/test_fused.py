"""The evaluator's fused log densities (pyrovae.fused) against torch.distributions, and the
compiled evaluator against the eager one."""
from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

from pyrovae.config import FitConfig, build_vae
from pyrovae.evaluation import kernels as fused
from pyrovae.evaluation.importance import estimate_log_likelihood, per_point_columns
from pyrovae.models import ReLU


@pytest.mark.parametrize("pixels", [1, 2, 5, 17, 20, 48, 784, 3072])
def test_lanes_split_the_pixels_into_short_products(pixels):
    lanes = fused._lanes(pixels)
    assert pixels % lanes == 0 and pixels // lanes <= fused.MAX_FACTORS
    assert lanes >= min(fused.LANES, pixels)
    assert fused._lanes(784) == 16  # MNIST: 49 factors per lane


@pytest.mark.parametrize("pixels", [3, 20, 784, 3072])
def test_bernoulli_log_prob_matches_torch(pixels):
    """Float64: equal to torch's Bernoulli to rounding, over logits from -60 to 60 (where
    e^{-|l|} underflows the 1 it is added to) and with a batch of x broadcast over particles."""
    g = torch.Generator().manual_seed(pixels)
    logits = torch.randn(7, 3, pixels, generator=g, dtype=torch.float64) * 20
    logits[0, 0, :3] = torch.tensor([60.0, -60.0, 0.0])
    x = torch.bernoulli(torch.full((3, pixels), 0.4, dtype=torch.float64), generator=g)
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(fused.bernoulli_log_prob(logits, x), expected, rtol=1e-12, atol=1e-9)


def test_bernoulli_log_prob_in_float32_is_as_accurate_as_torch():
    """The shared logs round like a float sum: the float32 error is no worse than torch's."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 20, 784, generator=g, dtype=torch.float64) * 6
    x = torch.bernoulli(torch.full((20, 784), 0.2, dtype=torch.float64), generator=g)
    exact = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    ours = fused.bernoulli_log_prob(logits.float(), x.float()).double()
    torchs = torch.distributions.Bernoulli(logits=logits.float()).log_prob(x.float()).sum(-1).double()
    ours_error, torch_error = (ours - exact).abs().max().item(), (torchs - exact).abs().max().item()
    assert ours_error < max(2 * torch_error, 1e-3)


def test_normal_log_prob_matches_torch():
    g = torch.Generator().manual_seed(1)
    loc = torch.randn(4, 5, dtype=torch.float64, generator=g)
    scale = torch.rand(4, 5, dtype=torch.float64, generator=g) + 0.1
    value = torch.randn(3, 4, 5, dtype=torch.float64, generator=g)
    expected = torch.distributions.Normal(loc, scale).log_prob(value).sum(-1)
    torch.testing.assert_close(fused.normal_log_prob(value, loc, scale), expected, rtol=1e-12, atol=1e-12)


def test_relu_is_in_place_only_without_autograd():
    relu = ReLU()
    x = torch.tensor([-1.0, 2.0], requires_grad=True)
    y = relu(x)
    assert y.data_ptr() != x.data_ptr() and x[0].item() == -1.0
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]
    with torch.no_grad():
        h = torch.tensor([-1.0, 2.0])
        assert relu(h) is h and h.tolist() == [0.0, 2.0]


def small_bernoulli_vae():
    torch.manual_seed(0)
    vae = build_vae(FitConfig(latent_dim=4, hidden=(16,)), 32, 30)
    x = torch.bernoulli(torch.full((30, 32), 0.3))
    return vae, x


def test_compiled_evaluator_gives_the_eager_numbers():
    """torch.compile fuses the same math; float32 rounding differs by ~1e-6 relative. Both chunk
    shapes (a full chunk and the last one) and both batch shapes go through the compiled kernels."""
    vae, x = small_bernoulli_vae()
    options = dict(k=70, batch_size=20, chunk_size=50, seed=2)
    eager = estimate_log_likelihood(vae, x, compile=False, **options)
    compiled = estimate_log_likelihood(vae, x, compile=True, **options)
    assert fused.compile_works()
    for name, column in per_point_columns(eager).items():
        np.testing.assert_allclose(per_point_columns(compiled)[name], column, rtol=1e-4, atol=1e-3, err_msg=name)


def test_a_failing_compile_falls_back_to_the_same_numbers(monkeypatch):
    """Without a working torch.compile (no C++ compiler, say) the evaluator warns once and goes
    on eagerly."""
    def broken_compile(fn, *args, **kwargs):
        def call(*a, **k):
            raise RuntimeError("no C++ compiler found\ndetails")
        return call

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_compile_failed", [])
    vae, x = small_bernoulli_vae()
    eager = estimate_log_likelihood(vae, x, k=20, compile=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = estimate_log_likelihood(vae, x, k=20, compile=True)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(messages) == 1 and "no C++ compiler found" in messages[0] and "details" not in messages[0]
    assert not fused.compile_works()
    np.testing.assert_array_equal(fallback.log_px, eager.log_px)


def test_the_first_compile_says_so_once(monkeypatch, caplog):
    """The first torch.compile of a process is a wait of tens of seconds: one line says why
    (through the pyrovae logger, which the CLI shows on stderr), naming the option that skips it."""
    monkeypatch.setattr(torch, "compile", lambda fn, *args, **kwargs: fn)   # no real compile: fast
    monkeypatch.setattr(fused, "_compiled", {})
    monkeypatch.setattr(fused, "_compile_failed", [])
    vae, x = small_bernoulli_vae()
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        estimate_log_likelihood(vae, x, k=20, compile=True)
        estimate_log_likelihood(vae, x, k=20, compile=True)
        estimate_log_likelihood(vae, x, k=20, compile=False)
    said = [r.getMessage() for r in caplog.records if "torch.compile" in r.getMessage()]
    assert len(said) == 1 and "compile=False" in said[0], said
