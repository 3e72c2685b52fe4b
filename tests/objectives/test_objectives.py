"""The training objectives of pyrovae.objectives against hand computations and each other."""
import math

import pyro
import pytest
from conftest import family_config, image_shape, served_families
import torch
from pyro.infer import RenyiELBO, Trace_ELBO, TraceMeanField_ELBO

from pyrovae.config import FitConfig, build_vae
from pyrovae.core.programs import bind
from pyrovae.core.vae import VAE
from pyrovae.guides import MeanFieldGuide
from pyrovae.objectives import IWAE_ELBO, elbo_terms, iwae_bound, log_weights, make_objective

LATENT, DATA, NUM_DATA, BATCH = 2, 6, 20, 4



@pytest.fixture
def setup():
    torch.manual_seed(3)
    vae = build_vae(FitConfig(latent_dim=LATENT, hidden=(5,)), DATA, NUM_DATA)
    x = torch.bernoulli(torch.rand(NUM_DATA, DATA, generator=torch.Generator().manual_seed(4)))
    index = torch.tensor([7, 1, 13, 4])
    return vae, x[index], index


def vec(**options):
    return dict(vectorize_particles=True, max_plate_nesting=1, **options)


def per_particle_elbo(vae, x, index, K, seed):
    """Per-particle (Trace, MeanField) ELBO estimates of the scaled batch objective, each [K]."""
    pyro.set_rng_seed(seed)
    terms = log_weights(*vae.bound(True), K, index, 1.0, x, num_data=NUM_DATA)
    scale = NUM_DATA / len(index)
    with torch.no_grad():
        loc, sd = vae.guide.encode("z", x)
        kl = torch.distributions.kl_divergence(torch.distributions.Normal(loc, sd),
                                               torch.distributions.Normal(0.0, 1.0)).sum(-1)
    trace = scale * terms.log_w.sum(-1)
    meanfield = scale * (terms.log_lik.sum(-1) - kl.sum())
    return trace.detach(), meanfield.detach()


def jit_compilations(objective):
    """How many times a JIT objective has compiled: a Pyro Jit*_ELBO, or pyrovae's wrapper holding
    one per batch shape in ``.compiled``."""
    inner = objective.compiled.values() if isinstance(getattr(objective, "compiled", None), dict) else [objective]
    total = 0
    for elbo in inner:
        fn = getattr(elbo, "_loss_and_surrogate_loss", None) or getattr(elbo, "_differentiable_loss", None)
        total += len(fn.compiled) if fn is not None else 0
    return total


def test_log_weights_reproduce_trace_elbo_on_the_same_seed(setup):
    vae, x, index = setup
    K = 7
    pyro.set_rng_seed(11)
    loss = Trace_ELBO(num_particles=K, **vec()).loss(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
    trace, _ = per_particle_elbo(vae, x, index, K, seed=11)
    assert trace.shape == (K,)
    assert loss == pytest.approx(-trace.mean().item(), rel=1e-5)


def test_trace_and_meanfield_elbo_agree_in_expectation(setup):
    vae, x, index = setup
    K = 4000
    trace, meanfield = per_particle_elbo(vae, x, index, K, seed=12)
    pyro.set_rng_seed(13)
    trace_loss = Trace_ELBO(num_particles=K, **vec()).loss(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
    pyro.set_rng_seed(14)
    mf_loss = TraceMeanField_ELBO(num_particles=K, **vec()).loss(*vae.bound(True), index, 1.0, x,
                                                                 num_data=NUM_DATA)
    se_trace = trace.std().item() / math.sqrt(K)
    se_mf = meanfield.std().item() / math.sqrt(K)
    # the analytic KL removes variance: the mean-field estimator is the less noisy one
    assert se_mf < se_trace
    se = math.sqrt(se_trace ** 2 + se_mf ** 2)
    assert abs(trace_loss - mf_loss) < 4 * se, (trace_loss, mf_loss, se)
    # and both sit near an independent estimate of the same expectation
    assert abs(-trace.mean().item() - mf_loss) < 4 * se


def test_analytic_kl_matches_torch_kl_of_normals(setup):
    vae, x, index = setup
    pyro.set_rng_seed(21)
    recon, kl = elbo_terms(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
    assert recon.shape == (BATCH,) and kl.shape == (BATCH,)
    loc, scale = vae.guide.encode("z", x)
    by_hand = torch.distributions.kl_divergence(torch.distributions.Normal(loc, scale),
                                                torch.distributions.Normal(torch.zeros(LATENT), torch.ones(LATENT))
                                                ).sum(-1)
    closed_form = 0.5 * (loc ** 2 + scale ** 2 - 1 - 2 * scale.log()).sum(-1)
    torch.testing.assert_close(kl, by_hand, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(kl, closed_form, rtol=1e-5, atol=1e-5)
    assert torch.all(kl > 0)
    # elbo_terms is unscaled: num_data and beta do not change it
    pyro.set_rng_seed(21)
    recon2, kl2 = elbo_terms(*vae.bound(True), index, 0.25, x, num_data=5 * NUM_DATA)
    torch.testing.assert_close((recon2, kl2), (recon, kl))
    # TraceMeanField_ELBO with one particle = -(N/B) * (reconstruction - beta * KL), on the same draw
    for beta in (1.0, 0.4):
        pyro.set_rng_seed(21)
        loss = TraceMeanField_ELBO(num_particles=1, **vec()).loss(*vae.bound(True), index, beta, x,
                                                                  num_data=NUM_DATA)
        expected = -(NUM_DATA / BATCH) * (recon - beta * kl).sum().item()
        assert loss == pytest.approx(expected, rel=1e-5)


def test_iwae_with_one_particle_equals_trace_elbo(setup):
    vae, x, index = setup
    for beta in (1.0, 0.5):
        pyro.set_rng_seed(31)
        trace = Trace_ELBO(num_particles=1, **vec()).differentiable_loss(*vae.bound(True), index, beta, x,
                                                                          num_data=NUM_DATA)
        pyro.set_rng_seed(31)
        iwae = IWAE_ELBO(num_particles=1).differentiable_loss(*vae.bound(True), index, beta, x,
                                                              num_data=NUM_DATA)
        torch.testing.assert_close(iwae, trace, rtol=1e-6, atol=1e-4)
        g_trace = torch.autograd.grad(trace, list(vae.parameters()))
        g_iwae = torch.autograd.grad(iwae, list(vae.parameters()))
        for a, b in zip(g_trace, g_iwae):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_iwae_bound_is_above_the_elbo_on_average(setup):
    vae, x, index = setup
    K, R = 8, 200
    with torch.no_grad():
        iwae = torch.tensor([-IWAE_ELBO(K).loss(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
                             for _ in range(R)])
        pyro.set_rng_seed(42)
        elbo = torch.tensor([-Trace_ELBO(num_particles=1, **vec()).loss(*vae.bound(True), index, 1.0, x,
                                                                         num_data=NUM_DATA) for _ in range(R)])
    gap = iwae.mean() - elbo.mean()
    se = math.sqrt(iwae.var() / R + elbo.var() / R)
    assert gap > -3 * se, (gap, se)
    # for this untrained model q is far from the posterior: the gap is clearly positive
    assert gap > 3 * se, (gap, se)


def test_iwae_loss_is_per_datapoint_and_differs_from_renyi(setup):
    vae, x, index = setup
    K = 6
    scale = NUM_DATA / BATCH
    pyro.set_rng_seed(51)
    loss = IWAE_ELBO(K).loss(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
    pyro.set_rng_seed(51)
    terms = log_weights(*vae.bound(True), K, index, 1.0, x, num_data=NUM_DATA)
    log_w = terms.log_w.detach()
    assert log_w.shape == (K, BATCH) and terms.data_scale == scale and float(terms.beta) == 1.0
    per_point = torch.logsumexp(log_w, dim=0) - math.log(K)
    torch.testing.assert_close(iwae_bound(log_w), per_point)
    assert loss == pytest.approx(-scale * per_point.sum().item(), rel=1e-5)
    batch_level = torch.logsumexp(scale * log_w.sum(-1), dim=0) - math.log(K)
    assert abs(loss + batch_level.item()) > 1e-2 * abs(loss)
    # Pyro's RenyiELBO(alpha=0) on the same draws. In Pyro 1.9 it does NOT pool the batch: the
    # data plate is declared, so it also keeps one log weight per datapoint, but it puts the
    # subsample scale inside the logsumexp, log mean_k w_ik^(N/B), not (N/B) log mean_k w_ik.
    renyi = RenyiELBO(alpha=0, num_particles=K, **vec())
    pyro.set_rng_seed(51)
    renyi_loss = renyi.loss(*vae.bound(True), index, 1.0, x, num_data=NUM_DATA)
    renyi_by_hand = -(torch.logsumexp(scale * log_w, dim=0) - math.log(K)).sum().item()
    assert renyi_loss == pytest.approx(renyi_by_hand, rel=1e-5)
    assert abs(renyi_loss - loss) > 1e-2 * abs(loss), (renyi_loss, loss)
    assert abs(renyi_loss + batch_level.item()) > 1e-2 * abs(loss)
    # without subsampling (num_data = batch > 1) the two coincide
    pyro.set_rng_seed(52)
    iwae_full = IWAE_ELBO(K).loss(*vae.bound(True), index, 1.0, x, num_data=BATCH)
    pyro.set_rng_seed(52)
    renyi_full = renyi.loss(*vae.bound(True), index, 1.0, x, num_data=BATCH)
    assert iwae_full == pytest.approx(renyi_full, rel=1e-5)


def test_iwae_beta_weighs_prior_minus_q(setup):
    vae, x, index = setup
    K, beta = 5, 0.3
    pyro.set_rng_seed(61)
    loss = IWAE_ELBO(K).loss(*vae.bound(True), index, beta, x, num_data=NUM_DATA)
    pyro.set_rng_seed(61)
    t = log_weights(*vae.bound(True), K, index, beta, x, num_data=NUM_DATA)
    assert float(t.beta) == pytest.approx(beta)
    log_w = (t.log_lik + beta * (t.log_prior - t.log_q)).detach()
    expected = -(NUM_DATA / BATCH) * iwae_bound(log_w).sum().item()
    assert loss == pytest.approx(expected, rel=1e-5)


def test_make_objective_names():
    assert isinstance(make_objective("trace"), Trace_ELBO)
    assert isinstance(make_objective("meanfield"), TraceMeanField_ELBO)
    iwae = make_objective("iwae", 7)
    assert isinstance(iwae, IWAE_ELBO) and iwae.num_particles == 7
    for bad in ("renyi", "TRACE", ""):
        with pytest.raises(ValueError, match="unknown objective"):
            make_objective(bad)
    with pytest.raises(ValueError, match="jit"):
        make_objective("iwae", 3, jit=True)


@pytest.mark.parametrize("model_name,guide_name", served_families())
def test_every_family_elbo_estimators_agree(model_name, guide_name):
    """The per-point elbo_terms equal the mean log weight on the same draws when the KL is Monte
    Carlo, and agree within SE when it is closed-form (mean-field guides); Trace_ELBO, IWAE with
    K = 1 and (for mean-field guides) TraceMeanField_ELBO estimate the same ELBO."""
    torch.manual_seed(4)
    config = family_config(model_name, guide_name, latent_dim=LATENT, hidden=(5,), z1_dim=3, z1_hidden=(4,),
                           flow_hidden=6)
    vae = build_vae(config, DATA, NUM_DATA, image_shape(DATA))
    with torch.no_grad():   # make q differ from the prior, so the KL terms matter
        for p in vae.guide.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.bernoulli(torch.rand(BATCH, DATA, generator=torch.Generator().manual_seed(9)))
    index = torch.arange(BATCH)
    model, guide = vae.bound()
    K = 3000
    with torch.no_grad():
        pyro.set_rng_seed(1)
        per_point = elbo_terms(model, guide, index, 1.0, x, num_samples=K)
        pyro.set_rng_seed(1)
        log_w = log_weights(model, guide, K, index, 1.0, x).log_w   # [K, B]: K independent ELBO draws
    reference, se = log_w.sum(-1).mean().item(), log_w.sum(-1).std().item() / math.sqrt(K)
    mean_field = getattr(vae.guide, "mean_field", False) and guide_name != "flow"
    if mean_field:
        assert abs(per_point.elbo.sum().item() - reference) < 4 * se, (per_point.elbo.sum(), reference, se)
    else:   # Monte Carlo KL on the same draws: the same numbers
        torch.testing.assert_close(per_point.elbo, log_w.mean(0), rtol=1e-5, atol=1e-4)
    objectives = {"trace": Trace_ELBO(num_particles=K, **vec())}
    if getattr(vae.guide, "mean_field", False):
        objectives["meanfield"] = TraceMeanField_ELBO(num_particles=K, **vec())
    for name, objective in objectives.items():
        with torch.no_grad():
            pyro.set_rng_seed(3)
            estimate = -objective.loss(model, guide, index, 1.0, x)
        assert abs(estimate - reference) < 6 * se, (name, estimate, reference, se)
    pyro.set_rng_seed(5)
    with torch.no_grad():
        iwae_1 = torch.tensor([-IWAE_ELBO(1).loss(model, guide, index, 1.0, x) for _ in range(300)])
    assert abs(iwae_1.mean().item() - reference) < 4 * iwae_1.std().item() / math.sqrt(300) + 4 * se


def _jit_pair(setup, name, guide):
    vae, x, index = setup
    if guide == "meanfield":
        torch.manual_seed(5)
        vae = VAE(vae.model, MeanFieldGuide({"z": LATENT}, NUM_DATA))
        with torch.no_grad():
            vae.guide.loc["z"].normal_()
    return vae, x, index, make_objective(name, 3, jit=False), make_objective(name, 3, jit=True)


def _loss_and_grads(vae, objective, model, guide, x, index, seed, via="differentiable_loss"):
    """The loss and d loss / d params on a fixed seed, by differentiable_loss or by loss_and_grads."""
    beta = torch.tensor(0.7)
    pyro.set_rng_seed(seed)
    if via == "differentiable_loss":
        loss = objective.differentiable_loss(model, guide, index, beta, x, num_data=NUM_DATA)
        return loss.item(), torch.autograd.grad(loss, list(vae.parameters()))
    vae.zero_grad(set_to_none=False)
    loss = objective.loss_and_grads(model, guide, index, beta, x, num_data=NUM_DATA)
    return loss, tuple(p.grad.clone() for p in vae.parameters())


def _assert_same(vae, plain, jit):
    (loss_plain, grads_plain), (loss_jit, grads_jit) = plain, jit
    assert loss_jit == pytest.approx(loss_plain, rel=1e-5)
    assert any(g.abs().sum() > 0 for g in grads_plain)
    for (pname, _), a, b in zip(vae.named_parameters(), grads_plain, grads_jit):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=lambda m: f"{pname}: {m}")


@pytest.mark.parametrize("guide", ["amortized", "meanfield"])
def test_jit_trace_elbo_loss_matches_non_jit_on_every_batch_shape(setup, guide):
    vae, x, index, plain, jit = _jit_pair(setup, "trace", guide)
    model, guide_fn = vae.bound(register=True)   # the same objects on every call: the JIT caches by their id
    # the first JIT call traces (running the program extra times, which consumes random numbers)
    jit.differentiable_loss(model, guide_fn, index, torch.tensor(0.7), x, num_data=NUM_DATA)
    _assert_same(vae, _loss_and_grads(vae, plain, model, guide_fn, x, index, 71),
                 _loss_and_grads(vae, jit, model, guide_fn, x, index, 71))
    # a batch of another size agrees too (once compiled for it: compiling consumes random numbers)
    other = torch.tensor([2, 9])
    x_other = torch.bernoulli(torch.full((2, DATA), 0.5), generator=torch.Generator().manual_seed(8))
    jit.differentiable_loss(model, guide_fn, other, torch.tensor(0.7), x_other, num_data=NUM_DATA)
    _assert_same(vae, _loss_and_grads(vae, plain, model, guide_fn, x_other, other, 72),
                 _loss_and_grads(vae, jit, model, guide_fn, x_other, other, 72))
    assert jit_compilations(jit) == 2   # one per batch shape, then cached


@pytest.mark.parametrize("guide", ["amortized", "meanfield"])
def test_jit_trace_elbo_differentiable_loss_gradients_match_non_jit(setup, guide):
    """pyro-ppl 1.9.2's JitTrace_ELBO.differentiable_loss doubles every gradient (its compiled loss is
    not detached); pyrovae's _JitTrace returns the right ones."""
    vae, x, index, plain, jit = _jit_pair(setup, "trace", guide)
    model, guide_fn = vae.bound(register=True)
    jit.differentiable_loss(model, guide_fn, index, torch.tensor(0.7), x, num_data=NUM_DATA)
    _assert_same(vae, _loss_and_grads(vae, plain, model, guide_fn, x, index, 71),
                 _loss_and_grads(vae, jit, model, guide_fn, x, index, 71))


@pytest.mark.parametrize("guide", ["amortized", "meanfield"])
def test_jit_meanfield_elbo_matches_non_jit_and_compiles_once(setup, guide):
    """pyro-ppl 1.9.2's JitTraceMeanField_ELBO re-traces on every call (it caches under one name and
    looks under another); pyrovae's _JitTraceMeanField compiles once and then matches the plain ELBO."""
    vae, x, index, plain, jit = _jit_pair(setup, "meanfield", guide)
    model, guide_fn = vae.bound(register=True)
    jit.differentiable_loss(model, guide_fn, index, torch.tensor(0.7), x, num_data=NUM_DATA)
    _assert_same(vae, _loss_and_grads(vae, plain, model, guide_fn, x, index, 71),
                 _loss_and_grads(vae, jit, model, guide_fn, x, index, 71))
    (compiled,) = jit.compiled.values()
    first = compiled._differentiable_loss
    jit.differentiable_loss(model, guide_fn, index, torch.tensor(0.7), x, num_data=NUM_DATA)
    assert compiled._differentiable_loss is first and jit_compilations(jit) == 1


def test_jit_meanfield_elbo_is_unbiased_for_the_same_loss(setup):
    """Over fresh draws, the JIT meanfield ELBO estimates the same expected loss as the plain one."""
    vae, x, index, _, _ = _jit_pair(setup, "meanfield", "amortized")
    model, guide_fn = vae.bound(register=True)
    R = 40
    with torch.no_grad():
        pyro.set_rng_seed(81)
        plain = torch.tensor([make_objective("meanfield", 20).loss(model, guide_fn, index, 1.0, x, num_data=NUM_DATA)
                              for _ in range(R)])
    jit = make_objective("meanfield", 20, jit=True)
    jitted = torch.tensor([jit.differentiable_loss(model, guide_fn, index, torch.tensor(1.0), x,
                                                   num_data=NUM_DATA).item() for _ in range(R)])
    se = math.sqrt(plain.var() / R + jitted.var() / R)
    assert abs(plain.mean() - jitted.mean()) < 4 * se


def test_jit_recompiles_for_every_fresh_binding(setup):
    """Pyro's JIT ELBOs key their compile cache on id(model), id(guide): so VAE.bound returns the
    same bound programs on every call, and a fresh binding costs a compilation."""
    vae, x, index = setup
    jit = make_objective("trace", 1, jit=True)
    model, guide = vae.bound(register=True)
    assert vae.bound(register=True) == (model, guide)
    for _ in range(3):
        jit.differentiable_loss(model, guide, index, torch.tensor(1.0), x, num_data=NUM_DATA)
    assert jit_compilations(jit) == 1
    jit.differentiable_loss(bind(vae.model, "model", True), bind(vae.guide, "guide", True), index, torch.tensor(1.0),
                            x, num_data=NUM_DATA)
    assert jit_compilations(jit) == 2


@pytest.mark.parametrize("name", ["trace", "meanfield"])
def test_jit_objective_draws_the_same_numbers_as_the_eager_one(setup, name):
    """make_objective(jit=True) undoes the random draws of compiling, so from the same seed the
    compiled and the eager loss see the same z on every step (training and resume rely on it)."""
    vae, x, index = setup
    model, guide_fn = vae.bound(register=True)
    losses = {}
    for jit in (False, True):
        objective = make_objective(name, 2, jit=jit)
        pyro.set_rng_seed(5)
        losses[jit] = [objective.differentiable_loss(model, guide_fn, index, torch.tensor(1.0), x,
                                                     num_data=NUM_DATA).item() for _ in range(3)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert len(set(losses[False])) == 3   # fresh draws on every step, not one draw replayed
