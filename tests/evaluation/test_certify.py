"""pyrovae certify (evaluation/certify.py) and the tuned-then-frozen HMC kernels of AIS and BDMC,
against the linear-Gaussian model's closed-form log p(x) (tests/linear_gaussian.py)."""
from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from linear_gaussian import linear_gaussian

from pyrovae.cli.main import cli
from pyrovae.core.errors import UsageError
from pyrovae.core.programs import rows_of
from pyrovae.evaluation import ais as ais_module
from pyrovae.evaluation.ais import AISSettings, AnnealedImportanceSampling, simulate, tune_step_sizes
from pyrovae.evaluation.annealing import anneal, sigmoid_schedule
from pyrovae.evaluation.certify import CONFIDENCE_Z, Certification, CertifySettings
from pyrovae.evaluation.driver import EvaluationInterrupted, Keep


@pytest.fixture(scope="module")
def case():
    return linear_gaussian(orthogonal=False, n=60)


def mean_se(values: np.ndarray) -> tuple[float, float]:
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def truth_of(case, x: torch.Tensor) -> np.ndarray:
    model = case.vae.model
    w, b = model.decoder[0].weight.detach(), model.decoder[0].bias.detach()
    s2 = model.likelihood.sigma().item() ** 2
    return torch.distributions.MultivariateNormal(b, w @ w.T + s2 * torch.eye(len(b), dtype=w.dtype)) \
        .log_prob(x).numpy()


PROTOCOL = dict(target_gap=0.5, bdmc_n=100, steps=20, growth=2.0, max_steps=160, chains=4, leapfrog=3, is_k=100, tune_points=30,
                check_points=60, seed=2)


def test_the_certificate_holds_the_closed_form_log_px(case):
    """log p̂ within 3 SE of the exact log p(x); the chosen T is the first whose BDMC gap's upper
    confidence bound meets the target, and its bracket holds the truth of the simulated points."""
    certificate = Certification(**PROTOCOL).certify(case.vae, case.x)
    summary = certificate.summary()
    json.dumps(summary, allow_nan=False)
    err, se = mean_se(certificate.estimate.log_px - case.log_px)
    assert abs(err) < 3 * se, (err, se)
    ladder = summary["bdmc_ladder"]
    assert [row["steps"] for row in ladder] == [20 * 2 ** i for i in range(len(ladder))]
    assert all(row["upper"] > 0.5 for row in ladder[:-1]) and ladder[-1]["upper"] <= 0.5
    assert summary["steps"] == ladder[-1]["steps"] and summary["bdmc_gap"] == ladder[-1]["gap"]
    assert summary["bdmc_gap_upper"] == pytest.approx(summary["bdmc_gap"] + CONFIDENCE_Z * summary["bdmc_gap_se"])
    # the bracket at the chosen T, on the same simulated points (a function of the seed)
    template = rows_of((case.x,), [i % len(case.x) for i in range(100)])
    simulated, _ = simulate(case.vae, template, PROTOCOL["seed"])
    truth = truth_of(case, simulated[0]).mean()
    low, high = summary["bdmc_lower_bound"], summary["bdmc_upper_bound"]
    slack = 3 * summary["bdmc_gap_se"]
    assert low - slack < truth < high + slack, (low, truth, high)
    assert summary["certified"] and summary["convergence"]["agrees"] and summary["convergence"]["points"] == 60
    assert summary["step_sizes"] == "tuned, then frozen" and summary["is_k"] == 100
    assert summary["log_likelihood"] > summary["is_log_likelihood"] > summary["elbo"]   # AIS beats IS beats L_1


def test_the_ladder_grows_by_its_ratio_up_to_max_steps():
    assert CertifySettings(steps=50, max_steps=400).ladder() == [50, 71, 100, 141, 200, 283, 400]   # r = √2
    assert CertifySettings(steps=20, growth=2, max_steps=170).ladder() == [20, 40, 80, 160]
    assert CertifySettings(steps=2, growth=1.1, max_steps=5).ladder() == [2, 3, 4, 5]   # each T above the last
    for growth in (1, 0.5, float("nan")):
        with pytest.raises(UsageError, match="growth must be a number above 1"):
            CertifySettings(growth=growth)


def test_no_t_up_to_max_steps_is_one_usage_error(case):
    with pytest.raises(UsageError, match=r"BDMC's gap at T = 4 .* above target_gap=0.01; pass a larger max_steps"):
        Certification(**{**PROTOCOL, "target_gap": 0.01, "steps": 2, "max_steps": 4}).certify(case.vae, case.x)


def test_the_estimate_runs_the_tuning_rounds_step_sizes_frozen(case):
    """The estimate's step sizes are the tuning round's; with them given, the same numbers; and
    inside a run every transition uses its temperature's step size, unchanged."""
    settings = AISSettings(steps=15, chains=4, leapfrog=2, is_k=0, tune_points=20, seed=1)
    tuned = tune_step_sizes(case.vae, case.vae.bound()[1], case.vae.as_batch(case.x), settings)
    assert len(tuned) == 16 and len(set(tuned)) > 2 and tuned[0] == tuned[1]   # adapted: not the start's 1.0
    result = AnnealedImportanceSampling(settings).estimate(case.vae, case.x)
    assert result.step_sizes == tuned and result.tune_points == 20
    given = AnnealedImportanceSampling(settings.but(step_sizes=tuned)).estimate(case.vae, case.x)
    np.testing.assert_array_equal(given.log_w, result.log_w)
    adapted = AnnealedImportanceSampling(settings.but(adapt_step_size=True)).estimate(case.vae, case.x)
    assert adapted.step_sizes is None and not np.allclose(adapted.log_w, result.log_w)
    assert adapted.summary()["step_sizes"] == "adapted during the run"
    # anneal with a schedule of step sizes: transition t uses base x scale[t - 1], never adapted
    z0 = torch.randn(3, 5, 2, dtype=torch.float64)
    base, scale = torch.full((3, 5), 0.2, dtype=torch.float64), torch.linspace(0.5, 2.0, 10, dtype=torch.float64)
    run = anneal(lambda z: (-0.5 * (z ** 2).sum(-1), -(z ** 2).sum(-1)), z0, sigmoid_schedule(10), leapfrog=2,
                 step_size=base, adapt=False, step_scale=scale, record_step_sizes=True)
    torch.testing.assert_close(run.step_sizes, base * scale[:, None, None], rtol=0, atol=0)
    with pytest.raises(UsageError, match="cannot be adapted as well"):
        anneal(lambda z: (-(z ** 2).sum(-1), -(z ** 2).sum(-1)), z0, sigmoid_schedule(10), step_scale=scale)


def test_step_sizes_are_checked_when_made():
    with pytest.raises(UsageError, match="step_sizes must hold steps \\+ 1 = 3"):
        AISSettings(steps=2, step_sizes=(1.0, 1.0))
    with pytest.raises(UsageError, match="positive finite"):
        AISSettings(steps=1, step_sizes=(1.0, float("nan")))
    with pytest.raises(UsageError, match="drop adapt_step_size=True"):
        AISSettings(steps=1, step_sizes=(1.0, 1.0), adapt_step_size=True)


def test_an_interrupted_certificate_resumes_to_the_same_per_point_values(case, tmp_path, monkeypatch):
    protocol = Certification(**{**PROTOCOL, "target_gap": 100, "batch_size": 30, "is_k": 20, "check_points": 5})
    whole = protocol.certify(case.vae, case.x)
    real, calls = ais_module.ais_batch, [0]

    def wrapped(*args, **kwargs):
        if "unsupported" in kwargs:   # the estimate's batches (BDMC's and the tuning round's pass none)
            calls[0] += 1
            if calls[0] == 2:
                os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    keep = Keep(tmp_path / "certify.npz", False, {"run": "test"})
    with monkeypatch.context() as patch:
        patch.setattr(ais_module, "ais_batch", wrapped)
        with pytest.raises(EvaluationInterrupted, match="stopped after 30 of 60 points"):
            protocol.certify(case.vae, case.x, keep=keep)
    assert (tmp_path / "certify.npz").exists()
    resumed = protocol.certify(case.vae, case.x, keep=Keep(keep.path, True, keep.options))
    for name, value in whole.estimate.columns().items():
        np.testing.assert_array_equal(resumed.estimate.columns()[name], value, err_msg=name)
    assert resumed.summary()["log_likelihood"] == whole.summary()["log_likelihood"]
    assert not (tmp_path / "certify.npz").exists()


CLI_PROTOCOL = ["--bdmc-n", 100, "--steps", 4, "--max-steps", 8, "--target-gap", 100, "--chains", 2, "--leapfrog", 1, "--is-k", 10,
                "--tune-points", 5, "--check-points", 5, "--limit", 10]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_certify_command_records_shows_and_writes_its_certificate(run):
    result = invoke("certify", run, *CLI_PROTOCOL)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == "certify" and out["n"] == 10 and out["steps"] == 4 and out["certified"]
    assert out["checkpoint"] and out["versions"]["pyrovae"] and out["is_k"] == 10 and "elbo" in out
    records = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert records[-1]["command"] == "certify" and records[-1]["checkpoint"] == out["checkpoint"]
    page = (run / "certificate.md").read_text()
    assert "**certified**" in page and f"{out['log_likelihood']:.3f}" in page
    shown = invoke("show", run)
    assert shown.exit_code == 0 and "log p(x), certified" in shown.stderr and "T=4" in shown.stderr


@pytest.mark.parametrize("option,value", [("--target-gap", 0), ("--bdmc-n", 99), ("--max-steps", 2), ("--growth", 1),
                                          ("--limit", 0), ("--check-points", 0)])
def test_bad_certify_options_are_one_line_and_exit_2(run, option, value):
    before = sorted(p.name for p in run.iterdir())
    result = invoke("certify", run, *CLI_PROTOCOL, option, value)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error:") and option in lines[0], lines
    assert sorted(p.name for p in run.iterdir()) == before


def test_jittered_step_sizes_break_a_periodic_hmc_trajectory():
    """On N(0, I) with ε = 2 sin(π / L), L leapfrog steps are one whole period of the discrete
    oscillator: a fixed ε returns every chain to where it started (it never mixes, and AIS's
    weights stop improving with T); the jittered ε of the frozen kernels moves them to the target."""
    leapfrog, chains = 10, 400
    eps = 2 * math.sin(math.pi / leapfrog)
    z0 = torch.ones(chains, 1, 2, dtype=torch.float64)
    ones = torch.ones(31, dtype=torch.float64)

    def log_densities(z):
        return -0.5 * (z ** 2).sum(-1), -0.5 * (z ** 2).sum(-1)
    fixed = anneal(log_densities, z0, ones, leapfrog=leapfrog, step_size=eps, adapt=False)
    torch.testing.assert_close(fixed.z, z0, atol=1e-4, rtol=0)   # rounding only: the target has sd 1
    g = torch.Generator().manual_seed(0)
    jittered = anneal(log_densities, z0, ones, leapfrog=leapfrog, step_size=eps, adapt=False,
                      jitter=lambda t, shape: torch.rand(shape, generator=g, dtype=torch.float64))
    # 400 chains: the sample variance of N(0, 1) is within 0.75..1.25 with overwhelming probability
    assert 0.75 < float(jittered.z.var(0).mean()) < 1.25 and abs(float(jittered.z.mean())) < 0.15
