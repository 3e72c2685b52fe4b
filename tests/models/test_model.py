"""Shapes, plates and scales of the Pyro models and guides of every registered family, as
pyrovae calls them (pyrovae.programs.bind): sites, the data plate, N/B and β scales, particles."""
import math

import pyro
import pytest
from conftest import family_config, image_shape, served_families
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch import nn

from pyrovae.config import build_vae
from pyrovae.core.contract import can
from pyrovae.core.vae import VAE
from pyrovae.guides import MeanFieldGuide
from pyrovae.models import MIN_SIGMA, VAEModel, parse_sigma
from pyrovae.models.likelihoods import Normal

LATENT, DATA, NUM_DATA, BATCH = 3, 8, 40, 5   # rows of 8: 2 x 4 images for --model conv
LIKELIHOODS = [("bernoulli", 1.0), ("normal", 0.5), ("normal", "learned"), ("normal", "learned-pixel")]
FAMILIES = served_families()   # the registries' pairs (two-layer with semi-amortized is refused)


def make_vae(likelihood="bernoulli", sigma=1.0, hidden=(6,), model="vae", guide="amortized"):
    torch.manual_seed(1)
    config = family_config(model, guide, likelihood=likelihood, sigma=str(sigma), hidden=hidden, latent_dim=LATENT,
                           z1_dim=4, z1_hidden=(5,), flow_hidden=8)
    return build_vae(config, DATA, NUM_DATA, image_shape(DATA))


def make_batch(likelihood, n=BATCH):
    generator = torch.Generator().manual_seed(2)
    x = torch.rand(n, DATA, generator=generator)
    return torch.bernoulli(x, generator=generator) if likelihood == "bernoulli" else x


def sample_sites(trace):
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def traces(vae, x, index=None, beta=1.0, particles=None, num_data=None, register=False):
    model, guide = vae.bound(register)
    if particles is not None:
        plate = pyro.plate("particles", particles, dim=-2)
        model, guide = plate(model), plate(guide)
    guide_trace = poutine.trace(guide).get_trace(index, beta, x, num_data=num_data)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(index, beta, x, num_data=num_data)
    return model_trace, guide_trace


@pytest.mark.parametrize("likelihood,sigma", LIKELIHOODS)
def test_site_names_shapes_and_data_plate_scale(likelihood, sigma):
    vae, x = make_vae(likelihood, sigma), make_batch(likelihood)
    model_trace, guide_trace = traces(vae, x, torch.tensor([3, 17, 0, 39, 8]), num_data=NUM_DATA, register=True)
    model_sites, guide_sites = sample_sites(model_trace), sample_sites(guide_trace)
    assert set(model_sites) == {"z", "x"} and set(guide_sites) == {"z"}
    assert model_sites["x"]["is_observed"] and not model_sites["z"]["is_observed"]
    assert torch.equal(model_sites["x"]["value"], x)
    assert torch.equal(model_sites["z"]["value"], guide_sites["z"]["value"])   # replay
    for site, event in ((model_sites["z"], LATENT), (model_sites["x"], DATA), (guide_sites["z"], LATENT)):
        assert site["fn"].batch_shape == (BATCH,) and site["fn"].event_shape == (event,)
        assert site["value"].shape == (BATCH, event)
        assert [(f.name, f.dim, f.size) for f in site["cond_indep_stack"]] == [("data", -1, BATCH)]
        # the scale of a minibatch of B rows from N: as a subsampled plate would give
        assert float(site["scale"]) == pytest.approx(NUM_DATA / BATCH, rel=1e-12)
    # registered for Pyro's JIT under the programs' names
    assert any(n.startswith("model$$$decoder") for n, s in model_trace.nodes.items() if s["type"] == "param")
    assert any(n.startswith("guide$$$") for n, s in guide_trace.nodes.items() if s["type"] == "param")
    prior = model_sites["z"]["fn"].base_dist
    assert torch.equal(prior.loc, torch.zeros(BATCH, LATENT)) and torch.equal(prior.scale, torch.ones(BATCH, LATENT))


def test_without_num_data_the_scale_is_one_and_nothing_is_registered():
    vae, x = make_vae(), make_batch("bernoulli")
    model_trace, guide_trace = traces(vae, x)
    for trace in (model_trace, guide_trace):
        assert float(sample_sites(trace)["z"]["scale"]) == 1.0
        assert not any(s["type"] == "param" for s in trace.nodes.values())


def test_bernoulli_likelihood_uses_decoder_logits():
    vae, x = make_vae("bernoulli"), make_batch("bernoulli")
    model_trace, _ = traces(vae, x)
    fn = sample_sites(model_trace)["x"]["fn"]
    z = sample_sites(model_trace)["z"]["value"]
    assert isinstance(fn.base_dist, torch.distributions.Bernoulli)
    assert torch.allclose(fn.base_dist.logits, vae.model.decoder(z))
    expected = torch.distributions.Bernoulli(logits=vae.model.decoder(z)).log_prob(x).sum(-1)
    assert torch.allclose(fn.log_prob(x), expected, atol=1e-6)


@pytest.mark.parametrize("sigma,shape", [(0.5, None), ("learned", ()), ("learned-pixel", (DATA,))])
def test_normal_sigma_modes(sigma, shape):
    vae, x = make_vae("normal", sigma), make_batch("normal")
    likelihood = vae.model.likelihood
    log_sigma = likelihood.log_sigma
    if shape is None:
        assert not isinstance(log_sigma, nn.Parameter)
        assert "model.likelihood.log_sigma" not in dict(vae.named_parameters())
    else:
        assert isinstance(log_sigma, nn.Parameter) and log_sigma.shape == shape
        assert "model.likelihood.log_sigma" in dict(vae.named_parameters())
        with torch.no_grad():  # make the per-pixel sigmas distinguishable
            log_sigma.copy_(torch.linspace(-1.0, 0.5, DATA) if shape else torch.tensor(-0.7))
    model_trace, _ = traces(vae, x, num_data=NUM_DATA)
    site = sample_sites(model_trace)["x"]
    z = sample_sites(model_trace)["z"]["value"]
    base = site["fn"].base_dist
    assert isinstance(base, torch.distributions.Normal)
    assert torch.allclose(base.loc, vae.model.decoder(z))
    expected_sigma = torch.full((DATA,), 0.5) if shape is None else log_sigma.detach().exp().expand(DATA)
    assert torch.allclose(base.scale, expected_sigma.expand(BATCH, DATA), rtol=1e-6)
    log_p = site["fn"].log_prob(x).sum()
    if shape is not None:
        (grad,) = torch.autograd.grad(log_p, [log_sigma])
        assert grad.shape == shape and torch.all(grad != 0)
        # analytic: d/d log σ of Σ [-log σ - (x - μ)² / (2σ²)] = Σ [(x - μ)² / σ² - 1]; float32 sums of
        # <= 35 terms agree to ~1e-7 relative, while the gradient in σ (a factor 1/σ) would fail
        terms = (x - base.loc.detach()) ** 2 / base.scale.detach() ** 2 - 1
        expected = terms.sum(0) if shape else terms.sum()
        torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-5)


def test_sigma_floor_and_parse_sigma():
    likelihood = Normal(DATA, "learned")
    with torch.no_grad():
        likelihood.log_sigma.fill_(-50.0)
    assert likelihood.sigma().item() == pytest.approx(MIN_SIGMA)
    assert parse_sigma("0.25") == 0.25 and parse_sigma("learned") == "learned"
    for bad in ("0", "-1", "nan", "inf", "big"):
        with pytest.raises(ValueError):
            parse_sigma(bad)
    with pytest.raises(KeyError):
        VAEModel(LATENT, DATA, hidden=(), likelihood="poisson")


@pytest.mark.parametrize("beta", [0.3, 2.5, torch.tensor(0.7)])
def test_beta_scales_latent_sites_in_model_and_guide(beta):
    vae, x = make_vae(), make_batch("bernoulli")
    model_trace, guide_trace = traces(vae, x, None, beta, num_data=NUM_DATA)
    data_scale, beta = NUM_DATA / BATCH, float(beta)
    assert float(sample_sites(model_trace)["z"]["scale"]) == pytest.approx(beta * data_scale, abs=1e-6)
    assert float(sample_sites(guide_trace)["z"]["scale"]) == pytest.approx(beta * data_scale, abs=1e-6)
    assert float(sample_sites(model_trace)["x"]["scale"]) == pytest.approx(data_scale, rel=1e-12)


@pytest.mark.parametrize("model,guide", FAMILIES)
def test_every_family_under_a_particle_plate(model, guide):
    """Every latent site has [K, B, dim] draws, log densities [K, B], and sits in the data plate."""
    K = 4
    vae, x = make_vae(model=model, guide=guide), make_batch("bernoulli")
    index = torch.tensor([3, 17, 0, 39, 8])
    model_trace, guide_trace = traces(vae, x, index, num_data=NUM_DATA, particles=K)
    latents = [layer for layer in vae.model.latent_layers()]
    assert {name for name, s in sample_sites(model_trace).items() if not s["is_observed"]} == {layer.name for layer in latents}
    assert set(sample_sites(guide_trace)) == {layer.name for layer in latents}
    for layer in latents:
        z = sample_sites(guide_trace)[layer.name]["value"]
        assert z.shape == (K, BATCH, layer.dim)
        assert not torch.allclose(z[0], z[1])   # distinct draws, not K copies
        for trace in (model_trace, guide_trace):
            site = trace.nodes[layer.name]
            assert site["fn"].log_prob(site["value"]).shape == (K, BATCH)
            assert {f.name: f.dim for f in site["cond_indep_stack"]} == {"data": -1, "particles": -2}
    x_site = sample_sites(model_trace)["x"]
    assert x_site["fn"].log_prob(x_site["value"]).shape == (K, BATCH)


def test_two_layer_model_is_burdas_structure():
    vae = make_vae(model="two-layer")
    model_trace, guide_trace = traces(vae, make_batch("bernoulli"))
    assert [n for n, s in sample_sites(model_trace).items()] == ["z2", "z1", "x"]   # p(z2) p(z1|z2) p(x|z1)
    assert list(sample_sites(guide_trace)) == ["z1", "z2"]                          # q(z1|x) q(z2|z1)
    z1 = guide_trace.nodes["z1"]["value"]
    loc = guide_trace.nodes["z2"]["fn"].base_dist.loc
    assert torch.allclose(loc, vae.guide.encode("z2", z1)[0])   # z2's q depends on z1's draw
    assert not can(vae.guide, "mean_field") and can(make_vae().guide, "mean_field")


def test_flow_guide_density_is_base_minus_log_det():
    vae, x = make_vae(guide="flow"), make_batch("bernoulli")
    _, guide_trace = traces(vae, x)
    site = guide_trace.nodes["z"]
    fn, z = site["fn"], site["value"]
    # invert the flows step by step and add up log|det|: log q(z) = log N(z0) - Σ log|det J|
    value, log_det = z, torch.zeros(BATCH)
    for transform in reversed(fn.transforms):
        previous = transform.inv(value)
        log_det = log_det + transform.log_abs_det_jacobian(previous, value)
        value = previous
    torch.testing.assert_close(fn.log_prob(z), fn.base_dist.log_prob(value) - log_det, rtol=1e-5, atol=1e-4)
    assert len(fn.transforms) == 2


def test_empty_hidden_gives_an_affine_decoder():
    vae = make_vae("normal", 1.0, hidden=())
    f = vae.model.decoder
    assert len(f) == 1 and isinstance(f[0], nn.Linear)
    z1, z2 = torch.randn(LATENT), torch.randn(LATENT)
    assert torch.allclose(f(0.3 * z1 + 0.7 * z2), 0.3 * f(z1) + 0.7 * f(z2), atol=1e-5)
    g = make_vae("normal", 1.0, hidden=(16,)).model.decoder   # with a ReLU layer: not affine
    zs = torch.randn(64, LATENT)
    assert not torch.allclose(g(-zs), 2 * g(torch.zeros(LATENT)) - g(zs), atol=1e-3)


def test_sigma_inv_sqrt2_is_squared_error_plus_constant():
    model = VAEModel(LATENT, DATA, hidden=(6,), likelihood="normal", sigma=1 / math.sqrt(2)).double()
    z = torch.randn(BATCH, LATENT, dtype=torch.float64)
    x = torch.rand(BATCH, DATA, dtype=torch.float64)
    out = model.decoder(z)
    neg_log_p = -model.likelihood(out).log_prob(x)
    expected = ((x - out) ** 2).sum(-1) + DATA / 2 * math.log(math.pi)
    torch.testing.assert_close(neg_log_p, expected, rtol=0, atol=1e-6)


def test_mean_field_guide_takes_its_rows_by_index():
    torch.manual_seed(0)
    model = VAEModel(LATENT, DATA, hidden=(6,))
    vae = VAE(model, MeanFieldGuide({"z": LATENT}, NUM_DATA))
    with torch.no_grad():
        vae.guide.loc["z"].copy_(torch.arange(NUM_DATA * LATENT, dtype=torch.float32).view(NUM_DATA, LATENT))
    index = torch.tensor([5, 2, 30, 11, 0])
    _, guide_trace = traces(vae, make_batch("bernoulli"), index, num_data=NUM_DATA)
    fn = sample_sites(guide_trace)["z"]["fn"].base_dist
    assert torch.equal(fn.loc, vae.guide.loc["z"][index].detach())
    assert torch.allclose(fn.scale, torch.ones(BATCH, LATENT))
    with pytest.raises(ValueError):
        vae.guide(torch.zeros(BATCH, DATA))  # a minibatch without row indices


def test_two_layer_output_bias_starts_at_the_training_means_logit(tmp_path):
    # Burda et al.'s decoder starts at the pixels' marginals; without it their two-layer recipe
    # collapsed (benchmarks/reproduce/SETTINGS.md)
    from pyrovae.config import PRESETS, FitConfig
    from pyrovae.data import load_dataset
    from pyrovae.models.two_layer import TwoLayerModel
    from pyrovae.workflows import fit, load_run

    x = torch.rand(50, 6, generator=torch.Generator().manual_seed(0))
    for output_bias in ("zero", "data-mean"):
        model = TwoLayerModel(3, 6, hidden=(5,), z1_dim=2, z1_hidden=(4,), init="glorot", output_bias=output_bias)
        model.initialize_from_data(x)
        last = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)][-1]
        expected = torch.zeros(6) if output_bias == "zero" else torch.logit(x.mean(0).clamp(0.001, 0.999))
        assert torch.allclose(last.bias, expected, atol=1e-6), output_bias
    assert PRESETS["burda-2layer"]["output_bias"] == "data-mean"

    # a new run sets it from its training rows (the validation rows held out), before the first step
    config = FitConfig(dataset="mnist-sample", model="two-layer", output_bias="data-mean", init="glorot",
                       validation=40, epochs=1, lr=1e-9)
    fit(config, tmp_path / "run", progress=False)
    decoder = load_run(tmp_path / "run").vae.model.decoder
    last = [m for m in decoder.modules() if isinstance(m, nn.Linear)][-1]
    train = load_dataset("mnist-sample").train[:-40]
    assert torch.allclose(last.bias, torch.logit(train.mean(0).clamp(0.001, 0.999)), atol=1e-3)
