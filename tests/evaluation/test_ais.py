"""AIS and BDMC from Pyro traces against the linear-Gaussian model's closed-form log p(x)
(tests/linear_gaussian.py builds it), every family, batching invariance, and bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from click.testing import CliRunner
from linear_gaussian import linear_gaussian
from torch import nn

from pyrovae.cli.main import cli
from pyrovae.config import FitConfig, build_vae
from pyrovae.core.errors import UsageError
from pyrovae.core.programs import data_plate
from pyrovae.core.vae import VAE
from pyrovae.evaluation.ais import bdmc, estimate_log_likelihood_ais


@pytest.fixture(scope="module")
def general():
    return linear_gaussian(orthogonal=False, n=60)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


@pytest.mark.parametrize("steps", [20, 200])
def test_ais_recovers_the_closed_form_log_px(general, steps):
    """From an untrained encoder (a poor start: K=100 IS is ~1.7 nats low), AIS with 20 or 200
    steps is within 3 SE (plus 0.02 nats) of the exact log p(x)."""
    result = estimate_log_likelihood_ais(general.vae, general.x, steps=steps, chains=8, leapfrog=3, is_k=100)
    err, se = mean_se(result.log_px - general.log_px)
    assert abs(err) < 3 * se + 0.02, (err, se)
    summary = result.summary()
    assert summary["ais_minus_is"] > 0.5   # AIS beats IS from the same start by far
    assert 0.3 < summary["accept_rate_mean"] < 1 and summary["khat_reason"]   # 8 chains: no k-hat
    json.dumps(summary, allow_nan=False)


def test_bdmc_sandwiches_the_truth_and_tightens_with_steps(general):
    """Forward AIS is below and reverse AIS above log p(x) in expectation; the gap shrinks with T."""
    short = bdmc(general.vae, general.x, steps=3, chains=4, leapfrog=2, is_k=50, seed=1)
    long = bdmc(general.vae, general.x, steps=100, chains=4, leapfrog=3, is_k=50, seed=1)
    assert torch.equal(short.data[0], long.data[0])   # the same simulated points (same seed)
    model = general.vae.model
    w, b = model.decoder[0].weight.detach(), model.decoder[0].bias.detach()
    s2 = model.likelihood.sigma().item() ** 2
    truth = torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(len(b), dtype=w.dtype)) \
        .log_prob(short.data[0]).numpy()
    for result in (short, long):
        low, low_se = mean_se(result.lower - truth)
        high, high_se = mean_se(result.upper - truth)
        assert low < 3 * low_se and high > -3 * high_se, (low, low_se, high, high_se)
    gap_short, se_short = mean_se(short.upper - short.lower)
    gap_long, se_long = mean_se(long.upper - long.lower)
    assert gap_short > 1.0 and gap_long < gap_short - 3 * math.hypot(se_short, se_long), (gap_short, gap_long)
    assert long.summary()["gap"] == pytest.approx(gap_long)


def test_a_points_estimate_does_not_depend_on_its_batch(general):
    whole = estimate_log_likelihood_ais(general.vae, general.x, steps=15, chains=4, leapfrog=2, batch_size=60,
                                        is_k=0, seed=3)
    pieces = estimate_log_likelihood_ais(general.vae, general.x, steps=15, chains=4, leapfrog=2, batch_size=7,
                                         is_k=0, seed=3)
    alone = estimate_log_likelihood_ais(general.vae, general.x[10:13], steps=15, chains=4, leapfrog=2,
                                        is_k=0, seed=3)
    np.testing.assert_allclose(pieces.log_px, whole.log_px, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(pieces.log_w, whole.log_w, rtol=1e-9, atol=1e-9)
    other_seed = estimate_log_likelihood_ais(general.vae, general.x, steps=15, chains=4, leapfrog=2, is_k=0, seed=4)
    assert not np.allclose(other_seed.log_w, whole.log_w)
    assert alone.n == 3 and np.all(np.isfinite(alone.log_px))


@pytest.mark.parametrize("model,guide", [("vae", "flow"), ("two-layer", "amortized"), ("two-layer", "flow"),
                                         ("vae", "meanfield")])
def test_every_family_anneals(model, guide):
    """Flows anneal in their base space, two-layer guides rerun per step; AIS beats the ELBO."""
    torch.manual_seed(0)
    vae = build_vae(FitConfig(model=model, guide=guide, latent_dim=3, hidden=(16,), z1_dim=4, z1_hidden=(8,),
                              flow_hidden=8), 12, 20)
    x = torch.bernoulli(torch.full((20, 12), 0.4))
    proposal = "guide" if guide != "meanfield" else "prior"
    result = estimate_log_likelihood_ais(vae, x, steps=30, chains=4, leapfrog=2, is_k=40, proposal=proposal)
    summary = result.summary()
    assert np.all(np.isfinite(result.log_px)) and result.chunk_invariant
    assert summary["log_likelihood"] > summary["elbo"]


class CoinModel(nn.Module):
    def forward(self, x):
        with data_plate(x):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1).expand(x.shape), 1.0).to_event(1), obs=x)


class CoinGuide(nn.Module):
    def forward(self, x):
        with data_plate(x):
            pyro.sample("c", dist.Bernoulli(0.5))


def test_discrete_latents_are_refused():
    with pytest.raises(UsageError, match="continuous latent sites.*'c' is discrete"):
        estimate_log_likelihood_ais(VAE(CoinModel(), CoinGuide()), torch.zeros(4, 2), steps=2, chains=2, is_k=0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("ais")
    np.savez(folder / "d.npz", train=rng.random((100, 10), dtype=np.float32), test=rng.random((20, 10),
                                                                                             dtype=np.float32))
    result = CliRunner().invoke(cli, ["fit", "--dataset", str(folder / "d.npz"), "--out", str(folder / "run"),
                                      "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet"])
    assert result.exit_code == 0, result.output
    return folder / "run"


@pytest.mark.parametrize("option,value", [("--steps", 0), ("--chains", 0), ("--leapfrog", -1), ("--steps", "x")])
def test_bad_ais_options_are_one_line_and_exit_2(run, option, value):
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--method", "ais", option, str(value)])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error:") and option in lines[0]


def test_evaluate_ais_and_bdmc_commands(run, tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(run), "--method", "ais", "--steps", "10", "--chains", "3",
                                      "--leapfrog", "2", "--limit", "6", "--is-k", "30",
                                      "--per-point", str(tmp_path / "ais.csv")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "ais" and out["steps"] == 10 and out["n"] == 6 and out["is_k"] == 30
    assert {"accept_rate_mean", "step_size", "chain_ess_frac_mean", "elbo", "is_log_likelihood"} <= out.keys()
    table = np.genfromtxt(tmp_path / "ais.csv", delimiter=",", names=True)
    assert table["log_px"].mean() == pytest.approx(out["log_likelihood"], abs=1e-9)
    result = CliRunner().invoke(cli, ["bdmc", str(run), "--n", "5", "--steps", "10", "--chains", "2",
                                      "--leapfrog", "2", "--is-k", "20"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 5 and out["gap"] == pytest.approx(out["reverse_upper_bound"] - out["forward_lower_bound"])


def test_the_chains_check_supports_on_their_first_evaluation_only(monkeypatch):
    """The first log-density evaluation of a batch validates every site's value (x binary, ...);
    the thousands after it run no checks (each was a pass over [chains, points, pixels])."""
    from pyrovae.evaluation.annealing import evaluate_state
    from pyrovae.evaluation.chains import _Target

    vae = build_vae(FitConfig(dataset="toy", latent_dim=2, hidden=(8,)), data_dim=6, num_train=5)
    x = torch.bernoulli(torch.full((5, 6), 0.5), generator=torch.Generator().manual_seed(0))
    checked = []
    validate = torch.distributions.Distribution._validate_sample
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_sample",
                        lambda self, value: (checked.append(type(self).__name__), validate(self, value))[1])
    model, guide = vae.bound()
    with pyro.validation_enabled(True):
        target = _Target(model, guide, (x,), torch.arange(5), chains=3, reuse_sites=True)
        u = torch.randn(3, 5, 2)
        checked.clear()
        evaluate_state(target.log_densities, u)
        assert checked, "the first evaluation validates"
        checked.clear()
        for _ in range(3):
            evaluate_state(target.log_densities, u)
        assert checked == []
