"""The VampPrior (Tomczak & Welling 2018): the prior is the mixture of the guide's q(z | u_k) at
learned pseudo-inputs. With a linear decoder and a Normal likelihood, p(x) is a mixture of
Gaussians in closed form, which IS and AIS must reach."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyrovae import estimate_log_likelihood
from pyrovae.config import FitConfig, build_vae
from pyrovae.core.errors import UsageError
from pyrovae.evaluation.ais import estimate_log_likelihood_ais
from pyrovae.evaluation.diagnostics import mean_and_se
from pyrovae.models.vampprior import DiagonalGaussianMixture
from pyrovae.workflows import fit

D, LATENT, K = 5, 2, 3


@pytest.fixture(scope="module")
def linear():
    """A VampPrior VAE with an affine decoder, sigma 0.5, and an affine encoder; some data."""
    torch.manual_seed(0)
    vae = build_vae(FitConfig(model="vampprior", hidden=(), latent_dim=LATENT, likelihood="normal", sigma="0.5",
                              pseudo_inputs=K, binarize="none"), D, 100).double()
    with torch.no_grad():
        vae.model.pseudo_inputs.copy_(torch.rand(K, D, dtype=torch.float64))   # spread the components apart
    x = torch.randn(40, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return vae, x


def closed_form_log_px(vae, x: torch.Tensor) -> np.ndarray:
    """log (1/K) Σ_k N(x; W μ_k + b, W diag(s_k²) Wᵀ + σ² I), with (μ_k, s_k) the encoder's at u_k."""
    model = vae.model
    loc, scale = vae.guide.encode("z", model.pseudo_inputs.clamp(0, 1))
    weight, bias = model.decoder[0].weight, model.decoder[0].bias
    sigma = model.likelihood.sigma()
    cov = weight @ torch.diag_embed(scale ** 2) @ weight.T + sigma ** 2 * torch.eye(D, dtype=x.dtype)
    mixture = torch.distributions.MultivariateNormal(loc @ weight.T + bias, cov)    # batch [K]
    return (torch.logsumexp(mixture.log_prob(x.unsqueeze(-2)), -1) - math.log(K)).detach().numpy()


def test_the_prior_is_the_mixture_of_the_guides_posteriors_at_the_pseudo_inputs(linear):
    vae, _ = linear
    z = torch.randn(7, LATENT, dtype=torch.float64)
    loc, scale = vae.guide.encode("z", vae.model.pseudo_inputs.clamp(0, 1))
    by_hand = torch.logsumexp(torch.distributions.Normal(loc, scale).log_prob(z.unsqueeze(-2)).sum(-1), -1) - math.log(K)
    assert torch.allclose(vae.model.prior().log_prob(z), by_hand, atol=1e-12)


def test_is_and_ais_reach_the_closed_form_log_likelihood(linear):
    vae, x = linear
    truth = closed_form_log_px(vae, x)
    for name, estimate in (("is", estimate_log_likelihood(vae, x, k=3000).log_px),
                           ("ais", estimate_log_likelihood_ais(vae, x, steps=100, chains=8, is_k=0).log_px)):
        error, se = mean_and_se(estimate - truth)
        assert abs(error) < max(3 * se, 0.02), (name, error, se)


def test_a_guide_without_an_encoder_for_any_input_is_refused():
    for guide in ("meanfield", "semi-amortized", "flow"):
        with pytest.raises(UsageError, match="--guide amortized or full-covariance"):
            build_vae(FitConfig(model="vampprior", guide=guide, latent_dim=2, hidden=(4,), pseudo_inputs=3), 6, 5)


def test_training_moves_the_pseudo_inputs_and_keeps_one_copy_of_the_encoder(tmp_path):
    config = FitConfig(model="vampprior", dataset="mnist-sample", pseudo_inputs=20, latent_dim=4, hidden=(32,),
                       epochs=3, batch_size=250, eval_train_points=200, device="cpu")
    torch.manual_seed(config.seed)   # fit builds the VAE first thing after seeding: the same start
    start = build_vae(config, 784, 5000).model.pseudo_inputs.detach().clone()
    result = fit(config, tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert not any(key.startswith("model.") and "encoders" in key for key in state)   # the guide's, once
    assert (state["model.pseudo_inputs"] - start).abs().mean() > 1e-3   # learned (Adam, 60 steps of 1e-3)
    assert -250 < result["test_elbo"] < -150   # nats, after 3 epochs of the sample (about -200)


def test_the_mixtures_matmul_log_density_is_the_broadcast_one_with_its_gradient():
    """The [..., K] matmul form against MixtureSameFamily's [..., K, D] broadcast, in float32 at
    points near and far from the components (where the expanded square nearly cancels)."""
    generator = torch.Generator().manual_seed(0)
    loc = 3 * torch.randn(20, 6, generator=generator)
    scale = torch.exp(torch.randn(20, 6, generator=generator) - 3)            # down to about 0.002
    z = torch.cat([loc[:5] + 1e-3 * torch.randn(5, 6, generator=generator),
                   4 * torch.randn(3, 4, 6, generator=generator).reshape(-1, 6)]).requires_grad_()
    reference = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=torch.zeros(20)),
        torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1))
    fast, slow = DiagonalGaussianMixture(loc, scale).log_prob(z), reference.log_prob(z)
    assert torch.allclose(fast, slow, rtol=1e-5, atol=1e-3), (fast - slow).abs().max()
    (gradient_fast,) = torch.autograd.grad(fast.sum(), z)
    (gradient_slow,) = torch.autograd.grad(slow.sum(), z)
    assert torch.allclose(gradient_fast, gradient_slow, rtol=1e-4, atol=1e-2)
    samples = DiagonalGaussianMixture(loc, scale).sample((4000,))
    assert samples.shape == (4000, 6) and abs(samples.mean() - loc.mean()) < 0.15   # SE about 0.04
