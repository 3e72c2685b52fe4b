"""Estimators as objects (issue 21): settings stated once and checked when made, objects that give
the functional API's numbers, the proposal of a run's points chosen by the library
(:func:`pyrovae.workflows.points_and_proposal`), evaluations of a run from Python, and the
commands' flags with the names and defaults users have."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from linear_gaussian import linear_gaussian

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.core.errors import UsageError, cli_audience
from pyrovae.evaluation.ais import BDMC, AnnealedImportanceSampling, bdmc, estimate_log_likelihood_ais
from pyrovae.evaluation.importance import ImportanceSampling, estimate_log_likelihood
from pyrovae.evaluation.settings import AISSettings, BDMCSettings, ISSettings
from pyrovae.inference.compare import CompareSettings
from pyrovae.inference.local_fit import fit_local
from pyrovae.workflows import RunFolder, bdmc_run, evaluate_run, load_run, points_and_proposal
from pyrovae.workflows.evaluating import BDMCRunSettings, EvaluateSettings


@pytest.fixture(scope="module")
def general():
    return linear_gaussian(orthogonal=False, n=20)


def same_columns(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


# ---------------------------------------------------------------------------- objects and settings

def test_objects_give_the_numbers_of_the_keyword_calls(general):
    vae, x = general.vae, general.x
    same_columns(ImportanceSampling(ISSettings(k=100, seed=2, batch_size=7)).estimate(vae, x).columns(),
                 estimate_log_likelihood(vae, x, k=100, seed=2, batch_size=7).columns())
    annealing = dict(steps=5, chains=3, leapfrog=2, is_k=20, seed=1)
    same_columns(AnnealedImportanceSampling(**annealing).estimate(vae, x, proposal="prior").columns(),
                 estimate_log_likelihood_ais(vae, x, proposal="prior", **annealing).columns())
    by_object = BDMC(BDMCSettings(**annealing)).estimate(vae, x)
    by_keywords = bdmc(vae, x, **annealing)
    np.testing.assert_array_equal(by_object.lower, by_keywords.lower)
    np.testing.assert_array_equal(by_object.upper, by_keywords.upper)


def test_settings_are_checked_when_made_and_name_the_parameter(general):
    with pytest.raises(UsageError, match=r"^k must be a whole number >= 1, got 0$"):
        ISSettings(k=0)
    with pytest.raises(UsageError, match=r"^chains must be a whole number >= 1, got 2.5$"):
        AISSettings(chains=2.5)
    with pytest.raises(UsageError, match="no setting kk; its settings are seed, compile, k, batch_size, chunk_size"):
        estimate_log_likelihood(general.vae, general.x, kk=3)
    with pytest.raises(UsageError, match="^step_sizes must be a sequence of positive finite numbers"):
        AISSettings(step_sizes=torch.ones(3))   # frozen per-temperature step sizes: a tuple of floats, checked
    with pytest.raises(UsageError, match=r"^unknown log_px 'gibbs'; use is, ais"):
        CompareSettings(log_px="gibbs")
    with pytest.raises(UsageError, match=r"^lr must be a positive number, got 0"):
        fit_local(general.vae, general.x, lr=0)
    with cli_audience():   # the same checks name the command's flags
        with pytest.raises(UsageError, match=r"^--batch-size must be a whole number >= 1, got 0$"):
            ISSettings(batch_size=0)
    assert ISSettings(k=10).but(seed=3) == ISSettings(seed=3, k=10)


def test_the_commands_flags_keep_their_names_and_defaults():
    expected = {
        "evaluate": {"method": "is", "k": 5000, "split": "test", "limit": None, "proposal": None, "steps": 1000,
                     "chains": 16, "leapfrog": 5, "is_k": 1000, "batch_size": None, "chunk_size": 50,
                     "compile": None, "seed": 0, "per_point": None, "device": "auto"},
        "compare": {"limit": 1000, "k": 5000, "steps": 3000, "lr": 0.05, "refine_steps": 20, "eval_samples": 100,
                    "split": None, "batch_size": 250, "log_px": "is", "ais_steps": 1000, "chains": 16,
                    "leapfrog": 5, "seed": 0},
        "bdmc": {"n": 100, "steps": 1000, "chains": 16, "leapfrog": 5, "is_k": 1000, "proposal": "guide",
                 "batch_size": None, "seed": 0},
    }
    for command, defaults in expected.items():
        params = {p.name: p for p in cli.commands[command].params}
        assert {name: params[name].default for name in defaults} == defaults, command
        flags = {opt for p in params.values() for opt in (*p.opts, *p.secondary_opts)}
        assert {"--" + name.replace("_", "-") for name in defaults} <= flags, command
    assert "--no-compile" in {opt for p in cli.commands["evaluate"].params for opt in p.secondary_opts}
    assert "compile" not in {p.name for p in cli.commands["bdmc"].params}   # BDMC is not compiled


# ---------------------------------------------------------------------------- the proposal of a run's points

@pytest.fixture
def meanfield_run(tmp_path, data):
    out = tmp_path / "mf"
    result = CliRunner().invoke(cli, [str(a) for a in ["fit", "--dataset", data, "--out", out, "--guide", "meanfield",
                                                         "--epochs", 1, "--hidden", 16, "--latent-dim", 2,
                                                         "--batch-size", 50, "--quiet", "--device", "cpu"]])
    assert result.exit_code == 0, result.output
    return out


def test_the_library_chooses_the_proposal_of_a_runs_points(run, meanfield_run):
    amortized = load_run(run, device="cpu")
    points = points_and_proposal(amortized, "test", limit=5)
    assert (points.name, points.proposal, points.index, points.fit) == ("guide", "guide", None, {})
    assert points_and_proposal(amortized, "test", "encoder", limit=5).proposal == "guide"
    assert points_and_proposal(amortized, "train", "prior", limit=5).proposal == "prior"
    fitted = points_and_proposal(amortized, "test", "fit", limit=5)
    assert fitted.name == "fit" and callable(fitted.proposal) and fitted.fit["fit_steps"] >= 1

    rows = load_run(meanfield_run, device="cpu")
    test = points_and_proposal(rows, "test", limit=5)   # no q for test points: fitted per point
    assert test.name == "fit" and test.index is None and "fit_seconds" in test.fit
    train = points_and_proposal(rows, "train", limit=5)   # the guide's own rows of these points
    assert train.name == "guide" and torch.equal(train.index, torch.arange(5))
    np.testing.assert_array_equal(train.proposal.loc["z"].detach(), rows.vae.guide.loc["z"][:5].detach())
    with pytest.raises(UsageError, match=r"no q for test points; use proposal='fit' \(the default\) or "
                                         r"split='train'"):
        points_and_proposal(rows, "test", "guide")
    with cli_audience(), pytest.raises(UsageError, match="use --proposal fit"):
        points_and_proposal(rows, "test", "guide")
    with pytest.raises(UsageError, match="unknown split 'tset'"):
        points_and_proposal(rows, "tset")


def test_evaluate_is_the_librarys_estimate_of_the_chosen_points(meanfield_run, tmp_path):
    """The command parses and prints: its per-point values are the library's, from the library's choice."""
    per_point = tmp_path / "points.npz"
    result = CliRunner().invoke(cli, ["evaluate", str(meanfield_run), "--split", "train", "--limit", "10", "--k", "30",
                                      "--per-point", str(per_point), "--no-record"])
    assert result.exit_code == 0, result.output
    run = load_run(meanfield_run, device="cpu")
    points = points_and_proposal(run, "train", limit=10)
    direct = ImportanceSampling(k=30).estimate(run.vae, points.data, points.proposal)
    same_columns(dict(np.load(per_point)), direct.columns())
    assert json.loads(result.stdout)["log_likelihood"] == direct.summary()["log_likelihood"]


def test_an_evaluation_of_a_run_from_python_is_recorded_with_its_checkpoint(run):
    out = evaluate_run(RunFolder(path=run, device="cpu"), EvaluateSettings(limit=5), importance=ISSettings(k=30))
    assert out["n"] == 5 and out["k"] == 30 and out["proposal"] == "guide" and out["run_dir"] == str(run)
    (record,) = runs.read_jsonl(run / runs.EVALUATIONS)
    assert record["command"] == "evaluate" and record["options"]["k"] == 30
    assert record["checkpoint"] == load_run(run, device="cpu").checkpoint
    before = (run / runs.EVALUATIONS).read_bytes()
    evaluate_run(RunFolder(path=run, device="cpu", no_record=True), EvaluateSettings(limit=5),
                 importance=ISSettings(k=30))
    assert (run / runs.EVALUATIONS).read_bytes() == before
    with pytest.raises(UsageError, match=r"^per_point 'x.txt' must end in .csv or .npz"):
        evaluate_run(RunFolder(path=run), EvaluateSettings(per_point="x.txt"))


def test_an_evaluation_from_python_says_through_logging_what_the_command_prints(run, caplog):
    with caplog.at_level(logging.INFO, logger="pyrovae"):
        out = bdmc_run(RunFolder(path=run, device="cpu", no_record=True), BDMCRunSettings(n=3),
                       annealing=BDMCSettings(steps=3, chains=2, leapfrog=2, is_k=0))
    assert out["n"] == 3 and out["steps"] == 3
    assert [r.message for r in caplog.records if r.name == "pyrovae.workflows.evaluating"] == [
        f"BDMC on 3 simulated points, T = 3: {out['forward_lower_bound']:.3f} <= log p(x) <= "
        f"{out['reverse_upper_bound']:.3f} (gap {out['gap']:.3f} ± {out['gap_se']:.3f} nats)"]
