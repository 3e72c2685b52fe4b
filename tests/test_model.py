"""Shapes, plates and scales of the VAE's Pyro model and guide (pyrovae.model, pyrovae.guides)."""
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrovae.guides import AmortizedGuide, MeanFieldGuide
from pyrovae.model import MIN_SIGMA, VAE, Decoder, parse_sigma


LATENT, DATA, NUM_DATA, BATCH = 3, 7, 40, 5
LIKELIHOODS = [("bernoulli", 1.0), ("normal", 0.5), ("normal", "learned"), ("normal", "learned-pixel")]



def make_vae(likelihood="bernoulli", sigma=1.0, hidden=(6,)):
    torch.manual_seed(1)
    return VAE(Decoder(LATENT, DATA, hidden, likelihood, sigma), AmortizedGuide(DATA, LATENT, hidden))


def make_batch(likelihood, n=BATCH):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(n, DATA, generator=generator)
    return torch.bernoulli(x, generator=generator) if likelihood == "bernoulli" else x


def sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def traces(vae, x, *args, particles=None, **kwargs):
    model, guide = vae.model, vae.guide
    if particles is not None:
        plate = pyro.plate("particles", particles, dim=-2)
        model, guide = plate(model), plate(guide)
    guide_trace = poutine.trace(guide).get_trace(x, *args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, *args, **kwargs)
    return model_trace, guide_trace


@pytest.mark.parametrize("likelihood,sigma", LIKELIHOODS)
def test_site_names_shapes_and_data_plate_scale(likelihood, sigma):
    vae, x = make_vae(likelihood, sigma), make_batch(likelihood)
    index = torch.tensor([3, 17, 0, 39, 8])
    model_trace, guide_trace = traces(vae, x, index, num_data=NUM_DATA)
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    assert set(model_sites) == {"z", "x"}
    assert set(guide_sites) == {"z"}
    assert model_sites["x"]["is_observed"] and not model_sites["z"]["is_observed"]
    assert torch.equal(model_sites["x"]["value"], x)
    # the model's z is the guide's z (replay)
    assert torch.equal(model_sites["z"]["value"], guide_sites["z"]["value"])
    for site, event in ((model_sites["z"], LATENT), (model_sites["x"], DATA), (guide_sites["z"], LATENT)):
        assert site["fn"].batch_shape == (BATCH,)
        assert site["fn"].event_shape == (event,)
        assert site["value"].shape == (BATCH, event)
        frames = [f for f in site["cond_indep_stack"]]
        assert [(f.name, f.dim, f.size, f.full_size) for f in frames] == [("data", -1, BATCH, NUM_DATA)]
        assert float(site["scale"]) == pytest.approx(NUM_DATA / BATCH, rel=1e-12)
    # the plate's subsample site holds exactly the given rows, in both programs
    assert torch.equal(model_trace.nodes["data"]["value"], index)
    assert torch.equal(guide_trace.nodes["data"]["value"], index)
    # params are registered under the module names
    assert any(n.startswith("decoder$$$") for n, s in model_trace.nodes.items() if s["type"] == "param")
    assert any(n.startswith("guide$$$") for n, s in guide_trace.nodes.items() if s["type"] == "param")
    # prior is N(0, I)
    prior = model_sites["z"]["fn"].base_dist
    assert torch.equal(prior.loc, torch.zeros(BATCH, LATENT)) and torch.equal(prior.scale, torch.ones(BATCH, LATENT))


def test_no_index_means_whole_batch_and_scale_one():
    vae, x = make_vae(), make_batch("bernoulli")
    model_trace, guide_trace = traces(vae, x)
    for trace in (model_trace, guide_trace):
        assert torch.equal(trace.nodes["data"]["value"], torch.arange(BATCH))
        assert float(sample_sites(trace)["z"]["scale"]) == 1.0


def test_bernoulli_likelihood_uses_decoder_logits():
    vae, x = make_vae("bernoulli"), make_batch("bernoulli")
    model_trace, _ = traces(vae, x)
    fn = sample_sites(model_trace)["x"]["fn"]
    z = sample_sites(model_trace)["z"]["value"]
    assert isinstance(fn.base_dist, torch.distributions.Bernoulli)
    assert torch.allclose(fn.base_dist.logits, vae.decoder(z))
    expected = torch.distributions.Bernoulli(logits=vae.decoder(z)).log_prob(x).sum(-1)
    assert torch.allclose(fn.log_prob(x), expected, atol=1e-6)


@pytest.mark.parametrize("sigma,shape", [(0.5, None), ("learned", ()), ("learned-pixel", (DATA,))])
def test_normal_sigma_modes(sigma, shape):
    vae, x = make_vae("normal", sigma), make_batch("normal")
    log_sigma = vae.decoder.log_sigma
    if shape is None:
        assert not isinstance(log_sigma, nn.Parameter)
        assert "log_sigma" in dict(vae.decoder.named_buffers())
        assert "decoder.log_sigma" not in dict(vae.named_parameters())
    else:
        assert isinstance(log_sigma, nn.Parameter) and log_sigma.shape == shape
        assert "decoder.log_sigma" in dict(vae.named_parameters())
        with torch.no_grad():  # make the per-pixel sigmas distinguishable
            log_sigma.copy_(torch.linspace(-1.0, 0.5, DATA) if shape else torch.tensor(-0.7))
    model_trace, _ = traces(vae, x, torch.arange(BATCH), num_data=NUM_DATA)
    site = sample_sites(model_trace)["x"]
    z = sample_sites(model_trace)["z"]["value"]
    base = site["fn"].base_dist
    assert isinstance(base, torch.distributions.Normal)
    assert torch.allclose(base.loc, vae.decoder(z))
    assert base.scale.shape == (BATCH, DATA)
    expected_sigma = torch.full((DATA,), 0.5) if shape is None else log_sigma.detach().exp().expand(DATA)
    assert torch.allclose(base.scale, expected_sigma.expand(BATCH, DATA), rtol=1e-6)
    # a learned sigma gets a gradient through the likelihood site; a fixed one is not trainable
    log_p = site["fn"].log_prob(x).sum()
    if shape is not None:
        (grad,) = torch.autograd.grad(log_p, [log_sigma])
        assert grad.shape == shape and torch.all(grad != 0)
        # analytic: d/d log σ of Σ [-log σ - (x - μ)² / (2σ²)] = Σ [(x - μ)² / σ² - 1], summed over the
        # batch (and over pixels for one shared σ). Both sides are float32 sums of <= 35 terms: they agree
        # to ~1e-7 relative (measured); the gradients are 2-5 in size, so the tolerances allow ~1e-5 of
        # reordering noise, while the gradient in σ instead of log σ (a factor 1/σ) would fail
        terms = (x - base.loc.detach()) ** 2 / base.scale.detach() ** 2 - 1
        expected = terms.sum(0) if shape else terms.sum()
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_sigma_floor_and_parse_sigma():
    decoder = Decoder(LATENT, DATA, (), "normal", "learned")
    with torch.no_grad():
        decoder.log_sigma.fill_(-50.0)
    assert decoder.sigma().item() == pytest.approx(MIN_SIGMA)
    assert parse_sigma("0.25") == 0.25 and parse_sigma("learned") == "learned"
    for bad in ("0", "-1", "nan", "inf", "big"):
        with pytest.raises(ValueError):
            parse_sigma(bad)
    with pytest.raises(ValueError):
        Decoder(LATENT, DATA, (), "poisson")


@pytest.mark.parametrize("beta", [0.3, 2.5, torch.tensor(0.7)])
def test_beta_scales_latent_site_in_model_and_guide(beta):
    vae, x = make_vae(), make_batch("bernoulli")
    index = torch.arange(BATCH)
    model_trace, guide_trace = traces(vae, x, index, beta, num_data=NUM_DATA)
    data_scale, beta = NUM_DATA / BATCH, float(beta)
    assert float(sample_sites(model_trace)["z"]["scale"]) == pytest.approx(beta * data_scale, abs=1e-12)
    assert float(sample_sites(guide_trace)["z"]["scale"]) == pytest.approx(beta * data_scale, abs=1e-12)
    # the likelihood is not scaled by beta
    assert float(sample_sites(model_trace)["x"]["scale"]) == pytest.approx(data_scale, rel=1e-12)


@pytest.mark.parametrize("likelihood,sigma", LIKELIHOODS)
def test_vectorized_particles(likelihood, sigma):
    K = 4
    vae, x = make_vae(likelihood, sigma), make_batch(likelihood)
    model_trace, guide_trace = traces(vae, x, torch.arange(BATCH), num_data=NUM_DATA, particles=K)
    z = sample_sites(guide_trace)["z"]["value"]
    assert z.shape == (K, BATCH, LATENT)
    # particles are distinct draws (not K copies)
    assert not torch.allclose(z[0], z[1])
    x_site = sample_sites(model_trace)["x"]
    assert x_site["fn"].batch_shape == (K, BATCH) and x_site["fn"].event_shape == (DATA,)
    assert x_site["fn"].log_prob(x_site["value"]).shape == (K, BATCH)
    model_trace.compute_log_prob()
    assert model_trace.nodes["z"]["log_prob"].shape == (K, BATCH)
    names = {f.name: f.dim for f in x_site["cond_indep_stack"]}
    assert names == {"data": -1, "particles": -2}
    # particle k's likelihood is the decoder at particle k's z
    k_loc = x_site["fn"].base_dist.logits if likelihood == "bernoulli" else x_site["fn"].base_dist.loc
    assert torch.allclose(k_loc[2], vae.decoder(z[2]), atol=1e-6)


def test_decoder_accepts_extra_leading_dims():
    decoder = make_vae("normal", "learned-pixel").decoder
    z = torch.randn(2, 3, 4, LATENT)
    out = decoder(z)
    assert out.shape == (2, 3, 4, DATA)
    assert torch.allclose(out[1, 2, 3], decoder(z[1, 2, 3]), atol=1e-6)
    likelihood = decoder.likelihood_dist(z)
    assert likelihood.batch_shape == (2, 3, 4) and likelihood.event_shape == (DATA,)


def test_empty_hidden_gives_an_affine_decoder_and_encoder():
    vae = make_vae("normal", 1.0, hidden=())
    assert len(vae.decoder.net) == 1 and isinstance(vae.decoder.net[0], nn.Linear)
    assert vae.latent_dim == LATENT
    z1, z2 = torch.randn(LATENT), torch.randn(LATENT)
    f = vae.decoder
    w, b = f.net[0].weight, f.net[0].bias
    assert torch.allclose(f(z1), w @ z1 + b, atol=1e-6)
    assert torch.allclose(f(0.3 * z1 + 0.7 * z2), 0.3 * f(z1) + 0.7 * f(z2), atol=1e-5)
    # contrast: with a hidden ReLU layer the decoder is not affine (this check can fail)
    g = make_vae("normal", 1.0, hidden=(16,)).decoder
    zs = torch.randn(64, LATENT)
    assert not torch.allclose(g(-zs), 2 * g(torch.zeros(LATENT)) - g(zs), atol=1e-3)


def test_sigma_inv_sqrt2_is_squared_error_plus_constant():
    # built in float64 so that the stored log sigma is log(1/sqrt 2) to double precision
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        decoder = Decoder(LATENT, DATA, (6,), "normal", 1 / math.sqrt(2))
    finally:
        torch.set_default_dtype(previous)
    assert decoder.log_sigma.dtype == torch.float64
    z = torch.randn(BATCH, LATENT, dtype=torch.float64)
    x = torch.rand(BATCH, DATA, dtype=torch.float64)
    neg_log_p = -decoder.likelihood_dist(z).log_prob(x)
    expected = ((x - decoder(z)) ** 2).sum(-1) + DATA / 2 * math.log(math.pi)
    assert neg_log_p.shape == (BATCH,)
    torch.testing.assert_close(neg_log_p, expected, rtol=0, atol=1e-12)


def test_mean_field_guide_in_model_guide_pair():
    torch.manual_seed(0)
    vae = VAE(Decoder(LATENT, DATA, (6,)), MeanFieldGuide(NUM_DATA, LATENT))
    with torch.no_grad():
        vae.guide_module.loc.copy_(torch.arange(NUM_DATA * LATENT, dtype=torch.float32).view(NUM_DATA, LATENT))
    index = torch.tensor([5, 2, 30, 11, 0])
    _, guide_trace = traces(vae, make_batch("bernoulli"), index, num_data=NUM_DATA)
    fn = sample_sites(guide_trace)["z"]["fn"].base_dist
    assert torch.equal(fn.loc, vae.guide_module.loc[index].detach())
    assert torch.allclose(fn.scale, torch.ones(BATCH, LATENT))
    with pytest.raises(ValueError):
        vae.guide_module(torch.zeros(BATCH, DATA))  # a minibatch without row indices
