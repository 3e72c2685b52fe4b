"""Pyro programs as Pyro users write them (issue 19): the model and guide of Pyro's own
examples/vae/vae.py (in today's pyro.plate spelling) passed as bound methods, pyro.module and
pyro.param under the JIT and without it, plain functions, constrained and scalar latents, data of
any shape, and a --program run through every command. Every idiom works, or is refused before
anything is written, naming the site, the program and the fix."""
from __future__ import annotations

import json
import math
import shutil
import textwrap

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn as nn
from click.testing import CliRunner
from pyro import poutine

from pyrovae import VAE, Dataset, FitConfig, bdmc, compare_inference, estimate_log_likelihood, fit, load_run
from pyrovae.cli.main import cli
from pyrovae.core.errors import UsageError
from pyrovae.data import load_dataset
from pyrovae.evaluation.ais import estimate_log_likelihood_ais
from pyrovae.evaluation.diagnostics import mean_and_se

# ---------------------------------------------------------------------------- Pyro's example, as written there

PYRO_EXAMPLE = '''
import pyro
import pyro.distributions as dist
import torch
import torch.nn as nn

fudge = 1e-7


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, 784)
        hidden = self.softplus(self.fc1(x))
        z_loc = self.fc21(hidden)
        z_scale = torch.exp(self.fc22(hidden))
        return z_loc, z_scale


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, 784)
        self.softplus = nn.Softplus()
        self.sigmoid = nn.Sigmoid()

    def forward(self, z):
        hidden = self.softplus(self.fc1(z))
        loc_img = (self.sigmoid(self.fc21(hidden)) + fudge) * (1 - 2 * fudge)
        return loc_img


class VAE(nn.Module):
    def __init__(self, z_dim=50, hidden_dim=400, use_cuda=False):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.use_cuda = use_cuda
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img).to_event(1), obs=x.reshape(-1, 784))

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def make():
    vae = VAE(z_dim=4, hidden_dim=32)
    return vae.model, vae.guide
'''
example: dict = {}
exec(compile(PYRO_EXAMPLE, "pyro_example", "exec"), example)
PyroVAE = example["VAE"]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    sample = load_dataset("mnist-sample")
    return Dataset("digits", sample.train[:300], sample.test[:60], (1, 28, 28))


def quick(**overrides) -> FitConfig:
    return FitConfig(**{"epochs": 2, "batch_size": 100, "eval_train_points": 100, "device": "cpu", **overrides})


def state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


# ---------------------------------------------------------------------------- training

@pytest.mark.parametrize("jit", [True, False])
def test_pyro_example_as_bound_methods_trains_every_parameter(tmp_path, digits, jit):
    torch.manual_seed(0)
    pv = PyroVAE(z_dim=4, hidden_dim=32)
    before = state_of(pv)
    fit(quick(epochs=3, jit=jit), tmp_path / "run", vae=VAE(pv.model, pv.guide), data=digits, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["config"]["jit"] is jit
    assert saved["program_info"]["latent"] == {"latent": [4]} and saved["program_info"]["data_dim"] == 784
    moved = {name for name, value in pv.state_dict().items() if not torch.equal(value, before[name])}
    assert moved == set(before), set(before) - moved   # encoder and decoder, as plain SVI trains them
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_elbo"] > metrics[0]["train_elbo"] + 20   # nats: ~-540 to ~-400 in 9 steps
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert sum(key.startswith("owners.0.") for key in checkpoint) == len(before)   # one copy of the owner


def test_plain_functions_with_pyro_module_and_pyro_param_train(tmp_path, digits):
    torch.manual_seed(0)
    decoder, encoder = nn.Linear(3, 784), nn.Linear(784, 6)

    def model(x):
        pyro.module("decoder", decoder)
        bias = pyro.param("pixel_bias", torch.zeros(784))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(3), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=decoder(z) + bias).to_event(1), obs=x)

    def guide(x):
        pyro.module("encoder", encoder)
        scale = pyro.param("scale_floor", torch.tensor(0.1), constraint=dist.constraints.positive)
        with pyro.plate("data", x.shape[0]):
            loc, raw = encoder(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, nn.functional.softplus(raw) + scale).to_event(1))

    weights = decoder.weight.detach().clone()
    fit(quick(epochs=2), tmp_path / "run", vae=VAE(model, guide), data=digits, progress=False)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert checkpoint["pyro_params.pixel_bias"].abs().sum() > 0.1       # pyro.param sites move ...
    assert float(checkpoint["pyro_params.scale_floor"]) != pytest.approx(math.log(0.1), abs=1e-6)  # (unconstrained)
    assert not torch.equal(decoder.weight.detach(), weights)            # ... and a global module's weights too
    assert "pixel_bias" not in pyro.get_param_store()                    # the caller's store is untouched


class BiasedVAE(PyroVAE):
    """Pyro's example with a learned pixel bias as a pyro.param site."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        bias = pyro.param("pixel_bias", torch.zeros(784))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("latent", dist.Normal(x.new_zeros(x.shape[0], self.z_dim), 1.0).to_event(1))
            logits = torch.logit(self.decoder(z)) + bias
            pyro.sample("obs", dist.Bernoulli(logits=logits).to_event(1), obs=x.reshape(-1, 784))


def test_pyro_param_is_checkpointed_and_restored_where_the_program_reads_it(tmp_path, digits):
    torch.manual_seed(0)
    pv = BiasedVAE(z_dim=4, hidden_dim=32)
    fit(quick(), tmp_path / "run", vae=VAE(pv.model, pv.guide), data=digits, progress=False)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]["pyro_params.pixel_bias"]
    assert trained.abs().sum() > 0.1
    fresh = BiasedVAE(z_dim=4, hidden_dim=32)
    run = load_run(tmp_path / "run", vae=VAE(fresh.model, fresh.guide), data=digits)
    model, _ = run.vae.bound()
    trace = poutine.trace(model).get_trace(None, 1.0, run.data.test[0][:3])
    assert torch.equal(trace.nodes["pixel_bias"]["value"].detach(), trained)   # what the program reads
    assert "pixel_bias" not in pyro.get_param_store()


def test_python_resume_of_a_user_run_takes_the_runs_own_options(tmp_path, digits):
    pv = PyroVAE(z_dim=4, hidden_dim=32)
    fit(quick(epochs=1, binarize="static"), tmp_path / "run", vae=VAE(pv.model, pv.guide), data=digits, progress=False)
    result = fit(FitConfig(epochs=2), tmp_path / "run", resume=True, vae=VAE(pv.model, pv.guide), data=digits,
                 progress=False)
    assert result["epochs"] == 2
    with pytest.raises(UsageError, match="binarize"):   # an option set to another value is still refused
        fit(FitConfig(epochs=3, binarize="none"), tmp_path / "run", resume=True, vae=VAE(pv.model, pv.guide),
            data=digits, progress=False)


def test_a_python_run_is_of_its_programs_not_of_the_default_families(tmp_path, digits, monkeypatch):
    """fit(FitConfig(), vae=...) with a real-valued likelihood: no binarize to pass (the data are
    kept as they are, read from the observed site), the run recorded and pictured as the program's."""
    from pyrovae.workflows import fitting

    captions = []

    class Recorded(fitting.RunImages):
        def __init__(self, run_dir, data, description):
            captions.append(description)
            super().__init__(run_dir, data, description)

    monkeypatch.setattr(fitting, "RunImages", Recorded)

    decoder = nn.Linear(2, 784)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(decoder(z), 1.0).to_event(1), obs=x)

    _, guide = _program(MODEL, GUIDE)
    fit(quick(epochs=1), tmp_path / "run", vae=VAE(model, guide), data=digits, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert saved["model"] == saved["guide"] == "custom" and saved["binarize"] == "none"
    assert "latent_dim" not in saved   # the default family's options are not this run's
    assert captions and "vae, amortized guide" not in captions[0] and "latent z" in captions[0], captions


def test_a_python_per_datapoint_guide_takes_the_local_step_options_given(tmp_path, digits):
    from pyrovae import MeanFieldGuide
    from pyrovae.training import callbacks

    model, _ = _program(MODEL, GUIDE)
    guide = MeanFieldGuide({"z": 2}, len(digits.train), sparse=True)
    steps = []
    original = callbacks.LocalSteps.__init__

    def recording(self, vae, loss, local_steps, *args, **kwargs):
        steps.append(local_steps)
        original(self, vae, loss, local_steps, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(callbacks.LocalSteps, "__init__", recording)
        fit(quick(epochs=1, local_steps=3, jit=False), tmp_path / "run", vae=VAE(model, guide), data=digits,
            progress=False)
    assert steps == [3]


# ---------------------------------------------------------------------------- refused before any work

def _program(model_body: str, guide_body: str):
    scope = {"pyro": pyro, "dist": dist, "torch": torch, "nn": nn}
    source = ("def model(x):\n" + textwrap.indent(model_body.strip("\n") + "\n", "    ")
              + "def guide(x):\n" + textwrap.indent(guide_body.strip("\n") + "\n", "    "))
    exec(source, scope)
    return scope["model"], scope["guide"]


MODEL = """
with pyro.plate("data", x.shape[0]):
    z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
    pyro.sample("x", dist.Bernoulli(logits=z.sum(-1, keepdim=True).expand(*z.shape[:-1], 784)).to_event(1), obs=x)
"""
GUIDE = """
with pyro.plate("data", x.shape[0]):
    pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))
"""
BAD = {
    "guide plate named otherwise": (MODEL, GUIDE.replace('"data"', '"batch"'),
                                    "the guide's site 'z' is in pyro.plate('batch'"),
    "global latent in the model": ('g = pyro.sample("g", dist.Normal(0.0, 1.0))\n' + MODEL, GUIDE,
                                   "the model's site 'g' is outside pyro.plate('data'"),
    "a latent the guide lacks": (MODEL, "pass\n", "the model's site 'z' is latent but the guide does not sample it"),
    "a guide site the model lacks": (MODEL, GUIDE + '    pyro.sample("w", dist.Normal(0.0, 1.0))\n',
                                     "the guide's site 'w' is not a latent site of the model"),
    "support of q differs from p's": (MODEL.replace("dist.Normal(x.new_zeros(2), 1.0)", "dist.LogNormal(x.new_zeros(2), 1.0)"),
                                      GUIDE, "the guide's site 'z' has support"),
    "no parameters to train": (MODEL, GUIDE, "no parameters to train"),
    "subsampled data plate": (MODEL.replace('x.shape[0])', 'x.shape[0], subsample_size=10)'), GUIDE,
                              "subsamples"),
    # a constant subsample_size equal to the rows the check runs on (64) would subsample every larger batch
    "subsample_size of the checked rows": (MODEL.replace('x.shape[0])', 'x.shape[0], subsample_size=64)'),
                                           GUIDE.replace('x.shape[0])', 'x.shape[0], subsample_size=64)'),
                                           "subsample"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_program_problems_are_refused_before_anything_is_written(tmp_path, digits, case):
    model_body, guide_body, message = BAD[case]
    model, guide = _program(model_body, guide_body)
    with pytest.raises(UsageError) as raised:
        fit(quick(), tmp_path / "run", vae=VAE(model, guide), data=digits, progress=False)
    assert message in str(raised.value), str(raised.value)
    assert "\n" not in str(raised.value)
    assert not (tmp_path / "run").exists()


def test_a_model_that_cannot_take_several_draws_at_once_is_refused(tmp_path, digits):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = z.sum(-1).reshape(x.shape[0], 1).expand(x.shape[0], 784)   # assumes one batch dim
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    _, guide = _program(MODEL, GUIDE)
    with pytest.raises(UsageError, match="cannot draw several z per datapoint at once"):
        fit(quick(), tmp_path / "run", vae=VAE(model, guide), data=digits, progress=False)
    assert not (tmp_path / "run").exists()


def test_binarizing_data_for_a_real_valued_likelihood_is_refused(tmp_path, digits):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True).expand(*z.shape[:-1], 784), 1.0).to_event(1), obs=x)

    _, guide = _program(MODEL, GUIDE)
    with pytest.raises(UsageError, match="binarize='none'"):
        fit(quick(binarize="dynamic"), tmp_path / "run", vae=VAE(model, guide), data=digits, progress=False)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------- estimates

def independent_is(pv: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """log (1/K) Σ_k p(x, z_k) / q(z_k | x) per row, one plain Pyro trace per draw."""
    log_w = []
    with torch.no_grad(), pyro.get_param_store().scope():
        for _ in range(k):
            guide_trace = poutine.trace(pv.guide).get_trace(x)
            model_trace = poutine.trace(poutine.replay(pv.model, trace=guide_trace)).get_trace(x)
            model_trace.compute_log_prob()
            guide_trace.compute_log_prob()
            log_p = sum(site["log_prob"] for site in model_trace.nodes.values() if site["type"] == "sample")
            log_q = sum(site["log_prob"] for site in guide_trace.nodes.values() if site["type"] == "sample"
                        and not site["is_observed"] and site["name"] != "data")
            log_w.append(log_p - log_q)
    return torch.logsumexp(torch.stack(log_w), 0) - math.log(k)


def test_is_of_pyros_example_agrees_with_an_independent_importance_sampler(digits):
    torch.manual_seed(1)
    pv = PyroVAE(z_dim=4, hidden_dim=32)
    x = torch.bernoulli(digits.test[:25], generator=torch.Generator().manual_seed(0))
    ours = estimate_log_likelihood(VAE(pv.model, pv.guide), x, k=300, seed=3)
    theirs = independent_is(pv, x, 300).double().numpy()
    mean, se = mean_and_se(ours.log_px - theirs)
    assert abs(mean) < 3 * se, (mean, se)
    summary = ours.summary()
    assert summary["elbo"] == pytest.approx(summary["iwae_bounds"][0]["bound"], rel=1e-8)   # the same K draws
    assert summary["bits_per_dim"] == pytest.approx(-summary["log_likelihood"] / (784 * math.log(2)), rel=1e-12)


def test_image_shaped_data_gives_bits_per_dim_over_every_pixel(tmp_path, digits):
    images = Dataset("images", digits.train.reshape(-1, 1, 28, 28), digits.test.reshape(-1, 1, 28, 28))
    assert images.data_dim == 784 and images.image_shape == (1, 28, 28)
    pv = PyroVAE(z_dim=4, hidden_dim=32)
    fit(quick(epochs=1), tmp_path / "run", vae=VAE(pv.model, pv.guide), data=images, progress=False)
    run = load_run(tmp_path / "run", vae=VAE(pv.model, pv.guide), data=images)
    summary = estimate_log_likelihood(run.vae, run.data.test[0][:20], k=50).summary()
    assert summary["bits_per_dim"] == pytest.approx(-summary["log_likelihood"] / (784 * math.log(2)), rel=1e-12)
    assert 0.1 < summary["bits_per_dim"] < 2.0   # ~1 after one epoch; the old data_dim of 1 gave ~800


# A scalar positive latent per datapoint with a closed-form marginal: v ~ InverseGamma(a, b),
# x_j | v ~ Normal(0, √v) for j = 1..D, so x is multivariate Student-t and the posterior of v
# is InverseGamma(a + D/2, b + |x|²/2).
A, B, D = 3.0, 2.0, 6


def log_px_inverse_gamma(x: torch.Tensor) -> np.ndarray:
    x = x.double()
    a_post, b_post = A + D / 2, B + 0.5 * x.square().sum(-1)
    return (torch.lgamma(torch.tensor(a_post)) - math.lgamma(A) + A * math.log(B) - a_post * b_post.log()
            - D / 2 * math.log(2 * math.pi)).numpy()


def scalar_scale_programs(log_scale: bool):
    """The model samples v itself (support positive), or u = log v (real, the variant that used to
    crash AIS); the guide is a LogNormal (or Normal on u) near the posterior, not equal to it."""
    def posterior_loc(x):
        return torch.log((B + 0.5 * x.square().sum(-1)) / (A + D / 2 - 1))

    def model(x):
        with pyro.plate("data", x.shape[0]):
            if log_scale:
                u = pyro.sample("u", dist.TransformedDistribution(dist.InverseGamma(A, B),
                                                                  [dist.transforms.ExpTransform().inv]))
                v = u.exp()
            else:
                v = pyro.sample("v", dist.InverseGamma(A, B))
            pyro.sample("x", dist.Normal(0.0, v.sqrt().unsqueeze(-1).expand(*v.shape, D)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc, scale = posterior_loc(x) + 0.2, torch.full(x.shape[:1], 0.5)
            pyro.sample("u" if log_scale else "v", dist.Normal(loc, scale) if log_scale else dist.LogNormal(loc, scale))

    return model, guide


@pytest.fixture(scope="module")
def scalar_data() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    v = 1 / torch.distributions.Gamma(A, B).sample((40,))
    return (torch.randn(40, D, generator=generator) * v.sqrt().unsqueeze(-1)).float()


@pytest.mark.parametrize("log_scale", [False, True])
def test_a_constrained_scalar_latent_in_is_ais_and_compare_matches_the_closed_form(scalar_data, log_scale):
    vae = VAE(*scalar_scale_programs(log_scale))
    x, truth = scalar_data, log_px_inverse_gamma(scalar_data)
    estimates = {
        "is": estimate_log_likelihood(vae, x, k=2000).log_px,
        "ais": estimate_log_likelihood_ais(vae, x, steps=100, chains=8, is_k=0).log_px,
        "compare (IS from q*)": np.asarray(compare_inference(vae, x, k=2000, steps=300, refine_steps=0, batch_size=40,
                                                              )["log_likelihood"]),
    }
    for name, log_px in estimates.items():
        if np.ndim(log_px) == 0:   # compare reports the mean: compare it with the truth's mean and SE
            assert abs(float(log_px) - truth.mean()) < 0.1, name
            continue
        mean, se = mean_and_se(log_px - truth)
        assert abs(mean) < max(3 * se, 0.01), (name, mean, se)


def test_bdmc_on_a_constrained_scalar_latent_brackets_the_truth(scalar_data):
    vae = VAE(*scalar_scale_programs(False))
    result = bdmc(vae, scalar_data, steps=50, chains=4, is_k=0)
    truth = log_px_inverse_gamma(result.data[0])
    lower, se_lower = mean_and_se(result.lower - truth)
    upper, se_upper = mean_and_se(result.upper - truth)
    assert lower < 3 * se_lower + 1e-3 and upper > -3 * se_upper - 1e-3, (lower, upper)


def positive_scale_programs(guide_family: str):
    """s ~ HalfNormal(1) per point (support nonnegative), x_j | s ~ Normal(0, s); a guide of another
    positive family (LogNormal, Gamma: support positive) or HalfNormal itself (|u| of a Normal: not a
    bijection, so AIS must not anneal it in its base space)."""
    def model(x):
        with pyro.plate("data", x.shape[0]):
            s = pyro.sample("s", dist.HalfNormal(x.new_ones(())).expand(x.shape[:1]))
            pyro.sample("x", dist.Normal(0.0, s.unsqueeze(-1).expand(*s.shape, D)).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            rms = x.square().mean(-1).sqrt()
            q = {"lognormal": lambda: dist.LogNormal(rms.log(), 0.4),
                 "gamma": lambda: dist.Gamma(6.0, 6.0 / rms),
                 "halfnormal": lambda: dist.HalfNormal(1.3 * rms)}[guide_family]()
            pyro.sample("s", q)

    return model, guide


@pytest.mark.parametrize("guide_family", ["lognormal", "gamma", "halfnormal"])
def test_a_positive_guide_serves_a_nonnegative_prior_and_ais_agrees_with_is(scalar_data, guide_family):
    vae = VAE(*positive_scale_programs(guide_family))
    x = scalar_data[:30]
    vae.prepare((x,))   # positive and nonnegative supports are one support for a density
    by_is = estimate_log_likelihood(vae, x, k=4000, seed=1).log_px
    by_ais = estimate_log_likelihood_ais(vae, x, steps=100, chains=8, is_k=0, seed=1).log_px
    mean, se = mean_and_se(by_ais - by_is)
    assert abs(mean) < max(3 * se, 0.02), (mean, se)   # base-space AIS of HalfNormal's |u| was log 2 off


# w ~ Dirichlet(α) per point, x | w ~ Multinomial(N, w): log p(x) is the Dirichlet-multinomial's,
# the posterior Dirichlet(α + x); the latent lives on a simplex (3 numbers, 2 unconstrained)
ALPHA, COUNT = (1.5, 2.0, 3.0), 12


def log_px_dirichlet_multinomial(x: torch.Tensor) -> np.ndarray:
    x, alpha = x.double(), torch.tensor(ALPHA, dtype=torch.float64)
    return (math.lgamma(COUNT + 1) - torch.lgamma(x + 1).sum(-1) + torch.lgamma(alpha.sum())
            - torch.lgamma(COUNT + alpha.sum()) + (torch.lgamma(x + alpha) - torch.lgamma(alpha)).sum(-1)).numpy()


def simplex_programs(guide_family: str):
    def model(x):
        with pyro.plate("data", x.shape[0]):
            w = pyro.sample("w", dist.Dirichlet(x.new_tensor(ALPHA)))
            pyro.sample("x", dist.Multinomial(COUNT, probs=w), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            if guide_family == "dirichlet":   # near the posterior Dirichlet(α + x), not equal to it
                pyro.sample("w", dist.Dirichlet(0.8 * (x + x.new_tensor(ALPHA))))
            else:   # a logistic normal: a Gaussian on 2 numbers pushed onto the simplex
                logits = (x + x.new_tensor(ALPHA)).log()
                loc = logits[..., :-1] - logits[..., -1:] + x.new_tensor([0.0, 0.1]).log1p()
                pyro.sample("w", dist.TransformedDistribution(dist.Normal(loc, 0.4).to_event(1),
                                                              dist.transforms.StickBreakingTransform()))

    return model, guide


@pytest.fixture(scope="module")
def counts() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    w = torch.distributions.Dirichlet(torch.tensor(ALPHA)).sample((40,))
    return torch.stack([torch.multinomial(row, COUNT, replacement=True, generator=generator).bincount(minlength=3)
                        for row in w]).float()


@pytest.mark.parametrize("guide_family", ["dirichlet", "logistic-normal"])
def test_a_simplex_latent_in_is_ais_and_compare_matches_the_closed_form(counts, guide_family):
    vae = VAE(*simplex_programs(guide_family))
    truth = log_px_dirichlet_multinomial(counts)
    estimates = {
        "is": estimate_log_likelihood(vae, counts, k=2000).log_px,
        "ais": estimate_log_likelihood_ais(vae, counts, steps=100, chains=8, is_k=0).log_px,
    }
    for name, log_px in estimates.items():
        mean, se = mean_and_se(log_px - truth)
        assert abs(mean) < max(3 * se, 0.01), (name, mean, se)
    compared = compare_inference(vae, counts, k=2000, steps=300, refine_steps=0, batch_size=40)
    assert abs(compared["log_likelihood"] - truth.mean()) < 0.05   # IS from q*, a Gaussian on the 2 numbers


def test_draws_outside_the_seeded_noise_repeat_and_leave_the_callers_generator_alone(counts):
    # a Dirichlet guide draws from torch's generator (no seeded-noise form): IS and AIS fork it
    # per batch, seeded by the tile, so a second call repeats the first and the caller's stream
    # goes on as if nothing had run
    vae = VAE(*simplex_programs("dirichlet"))
    for estimate in (lambda: estimate_log_likelihood(vae, counts, k=50, batch_size=16).log_px,
                     lambda: estimate_log_likelihood_ais(vae, counts, steps=5, chains=4, is_k=0, batch_size=16).log_px):
        torch.manual_seed(123)
        expected = torch.rand(3)
        torch.manual_seed(123)
        first = estimate()
        assert torch.equal(torch.rand(3), expected)
        np.testing.assert_array_equal(estimate(), first)


# ---------------------------------------------------------------------------- a --program run, from anywhere

def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_a_program_run_works_in_every_command_from_another_folder(tmp_path, monkeypatch):
    home, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    home.mkdir(), elsewhere.mkdir()
    (home / "pyro_vae.py").write_text(PYRO_EXAMPLE)
    rng = np.random.default_rng(0)
    np.savez(home / "digits.npz", train=rng.random((200, 28, 28), dtype=np.float32),
             test=rng.random((40, 28, 28), dtype=np.float32))
    monkeypatch.chdir(home)
    fitted = invoke("fit", "--program", "pyro_vae.py:make", "--dataset", "digits.npz", "--epochs", 1,
                    "--batch-size", 100, "--out", "run", "--quiet")
    assert fitted.exit_code == 0, fitted.output
    saved = json.loads((home / "run" / "config.json").read_text())
    assert saved["config"]["program"] == f"{home / 'pyro_vae.py'}:make" and saved["config"]["binarize"] == "dynamic"
    run = home / "run"
    monkeypatch.chdir(elsewhere)
    for args in (["evaluate", run, "--k", 30, "--limit", 10],
                 ["compare", run, "--limit", 8, "--k", 30, "--steps", 30, "--refine-steps", 2],
                 ["bdmc", run, "--n", 4, "--steps", 3, "--chains", 2, "--is-k", 0],
                 ["sample", run, "--out", elsewhere / "s.png", "--n", 4],
                 ["reconstruct", run, "--out", elsewhere / "r.png", "--n", 4],
                 ["latent-map", run, "--out", elsewhere / "l.png", "--n", 20],
                 ["fit", "--out", run, "--resume", "--epochs", 2, "--quiet"]):
        result = invoke(*args)
        assert result.exit_code == 0, (args, result.output)
        json.loads(result.stdout.strip().splitlines()[-1])
    shown = invoke("show", run)
    assert "VAE.model" in shown.stderr and "latent 4" in shown.stderr and "obs ~ Bernoulli" in shown.stderr
    # the file moves: the message says where it was and how to point at it
    shutil.move(home / "pyro_vae.py", elsewhere / "moved.py")
    moved = invoke("evaluate", run, "--k", 10, "--limit", 5)
    assert moved.exit_code == 2 and "does not exist" in moved.stderr and "--program" in moved.stderr
    again = invoke("evaluate", run, "--k", 10, "--limit", 5, "--program", elsewhere / "moved.py:make")
    assert again.exit_code == 0, again.output


def test_program_with_a_family_option_is_refused(tmp_path, monkeypatch):
    (tmp_path / "p.py").write_text(PYRO_EXAMPLE)
    result = invoke("fit", "--program", tmp_path / "p.py:make", "--latent-dim", 3, "--out", tmp_path / "run")
    assert result.exit_code == 2 and "--latent-dim" in result.stderr and not (tmp_path / "run").exists()


def test_a_program_from_a_module_and_a_changed_file_are_served(tmp_path, monkeypatch, caplog):
    """--program package.module:FACTORY from the import path; a file edited since training is
    loaded as it is now, with a note."""
    package = tmp_path / "mine"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pyro_vae.py").write_text(PYRO_EXAMPLE)
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "digits.npz", train=rng.random((200, 784), dtype=np.float32),
             test=rng.random((40, 784), dtype=np.float32))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    fitted = invoke("fit", "--program", "mine.pyro_vae:make", "--dataset", "digits.npz", "--epochs", 1,
                    "--batch-size", 100, "--out", "by-module", "--quiet")
    assert fitted.exit_code == 0, fitted.output
    assert json.loads((tmp_path / "by-module" / "config.json").read_text())["config"]["program"] == "mine.pyro_vae:make"
    assert invoke("evaluate", "by-module", "--k", 10, "--limit", 5).exit_code == 0

    (tmp_path / "p.py").write_text(PYRO_EXAMPLE)
    assert invoke("fit", "--program", "p.py:make", "--dataset", "digits.npz", "--epochs", 1, "--batch-size", 100,
                  "--out", "by-file", "--quiet").exit_code == 0
    (tmp_path / "p.py").write_text(PYRO_EXAMPLE + "\n# edited after training\n")
    with caplog.at_level("WARNING"):
        again = invoke("evaluate", "by-file", "--k", 10, "--limit", 5)
    assert again.exit_code == 0, again.output
    assert "has changed since the run was trained" in again.stderr + caplog.text

