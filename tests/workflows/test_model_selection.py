"""Model selection: --validation holds out training rows whose ELBO is recorded every epoch,
best.pt is the checkpoint of the best one (with checkpoint.pt's guarantees), --patience stops
early, --checkpoint best evaluates it; and a mean-field run's test-time fit is kept in metrics."""
import json
import math

import pytest
import torch
from click.testing import CliRunner

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.workflows import load_run

EPOCHS = 6
TINY = ["--hidden", 16, "--latent-dim", 2, "--batch-size", 50, "--lr", 0.05, "--quiet", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def fitted(data, out, *extra):
    result = invoke("fit", "--dataset", data, "--out", out, *TINY, *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.output.strip().splitlines()[-1])


def validation_elbos(run_dir):
    return {m["epoch"]: m["validation_elbo"] for m in runs.read_jsonl(run_dir / runs.METRICS)}


@pytest.fixture
def selected(data, tmp_path):
    """EPOCHS epochs of a tiny VAE with 40 of the 150 training rows held out."""
    out = tmp_path / "selected"
    return out, fitted(data, out, "--epochs", EPOCHS, "--validation", 40)


def assert_same_model(a: dict, b: dict):
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])


def test_best_pt_is_the_checkpoint_of_the_best_validation_elbo(selected, data, tmp_path):
    out, result = selected
    elbos = validation_elbos(out)
    assert sorted(elbos) == list(range(1, EPOCHS + 1)) and all(math.isfinite(v) for v in elbos.values())
    best_epoch = max(elbos, key=elbos.get)
    # the seeded run peaks before its last epoch (else best.pt would be checkpoint.pt and prove little)
    assert best_epoch < EPOCHS, elbos
    assert (result["best_validation_epoch"], result["best_validation_elbo"]) == (best_epoch, elbos[best_epoch])
    best = runs.load_checkpoint(out, name=runs.BEST)   # checksummed: verified on load
    assert best["epoch"] == best_epoch
    # the same seeded run stopped at that epoch holds the same weights in its checkpoint.pt
    shorter = tmp_path / "shorter"
    fitted(data, shorter, "--epochs", best_epoch, "--validation", 40)
    assert_same_model(best, runs.load_checkpoint(shorter))
    assert load_run(out, "cpu", checkpoint="best").epoch == best_epoch
    assert load_run(out, "cpu").epoch == EPOCHS


def test_resume_keeps_best_pt_bit_identical(selected, data, tmp_path):
    out, _ = selected
    split = tmp_path / "split"
    fitted(data, split, "--epochs", 2, "--validation", 40)
    fitted(data, split, "--epochs", EPOCHS, "--validation", 40, "--resume")
    assert validation_elbos(split) == validation_elbos(out)
    a, b = runs.load_checkpoint(out, name=runs.BEST), runs.load_checkpoint(split, name=runs.BEST)
    assert a["epoch"] == b["epoch"]
    assert_same_model(a, b)
    fitted(data, split, "--epochs", 1, "--overwrite")   # a run without validation: no best.pt of the old one
    assert not (split / runs.BEST).exists()


def test_patience_stops_once_the_validation_elbo_has_not_improved(selected, data, tmp_path):
    out, _ = selected
    elbos = validation_elbos(out)
    patience = 1   # the seeded run's validation ELBO first fails to improve at epoch 2
    best_epoch, stop = 1, None   # the first epoch with no better validation ELBO in the last `patience`
    for epoch in range(2, EPOCHS + 1):
        if elbos[epoch] > elbos[best_epoch]:
            best_epoch = epoch
        elif epoch - best_epoch >= patience:
            stop = epoch
            break
    assert stop is not None and stop < EPOCHS, elbos   # the seeded run gives patience something to do
    early = tmp_path / "early"
    result = fitted(data, early, "--epochs", EPOCHS, "--validation", 40, "--patience", patience)
    assert result["epochs"] == stop and result["stopped_early"] and not result["stopped_by_time_budget"]
    assert runs.load_checkpoint(early, name=runs.BEST)["epoch"] == result["best_validation_epoch"] == best_epoch


def test_checkpoint_best_evaluates_best_pt(selected):
    out, result = selected
    evaluated = invoke("evaluate", out, "--checkpoint", "best", "--k", 10, "--limit", 5)
    assert evaluated.exit_code == 0, evaluated.output
    summary = json.loads(evaluated.output.strip().splitlines()[-1])
    assert summary["epoch"] == result["best_validation_epoch"] and summary["checkpoint"] == "best"
    (record,) = runs.read_jsonl(out / runs.EVALUATIONS)
    assert record["checkpoint"] == runs.checkpoint_sha256(out, runs.BEST) != runs.checkpoint_sha256(out)
    assert record["options"]["checkpoint_file"] == runs.BEST
    described = runs.describe_run(out)
    assert described["evaluations"] == [record] and not described["other_evaluations"]   # best.pt's: current
    shown = invoke("show", out)
    assert "log p(x), IS, best.pt" in shown.output and "best validation ELBO (epoch)" in shown.output


def test_pictures_take_the_checkpoint_too(selected, tmp_path):
    """latent-map (any data) of best.pt: the best epoch's encoder, said in the JSON."""
    out, result = selected
    for checkpoint in ("best", "last"):
        drawn = invoke("latent-map", out, "--checkpoint", checkpoint, "--n", 20, "--out", tmp_path / f"{checkpoint}.png")
        assert drawn.exit_code == 0, drawn.output
        assert json.loads(drawn.output.strip().splitlines()[-1])["checkpoint"] == checkpoint
    assert (tmp_path / "best.png").read_bytes() != (tmp_path / "last.png").read_bytes()


def test_checkpoint_best_of_a_run_without_validation_is_one_line(run):
    result = invoke("evaluate", run, "--checkpoint", "best", "--k", 10)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"pyrovae: error: {str(run)!r} has no best.pt: it was trained without a validation split; pass "
        "--checkpoint last, or train with --validation 400 (say)"]
    assert not (run / runs.EVALUATIONS).exists()


@pytest.mark.parametrize("extra,problem", [
    (["--validation", 150], "--validation 150 holds out every training row (the data have 150)"),
    (["--patience", 2], "--patience 2 stops on the validation ELBO, but there is no validation split"),
    (["--guide", "meanfield", "--validation", 10], "--validation 10 needs a guide with an encoder"),
    (["--validation", -1], "--validation must be a whole number >= 0"),
])
def test_bad_validation_options_are_one_line_and_write_nothing(data, tmp_path, extra, problem):
    result = invoke("fit", "--dataset", data, "--out", tmp_path / "run", *TINY, *extra)
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"pyrovae: error: {problem}"), line
    assert not (tmp_path / "run").exists()


def test_meanfield_test_elbo_and_its_terms_are_kept_in_metrics(data, tmp_path):
    out = tmp_path / "mf"
    result = fitted(data, out, "--guide", "meanfield", "--epochs", 1)
    (record,) = runs.read_jsonl(out / runs.METRICS)
    assert record["test_elbo_points"] == 40 and record["test_elbo_fit_steps"] >= 1
    for key in ("test_elbo", "test_reconstruction", "test_kl"):
        assert result[key] == record[key] and math.isfinite(record[key])
    # the ELBO and its terms come from the same draws: equal up to float32 rounding of 8-pixel sums
    assert record["test_elbo"] == pytest.approx(record["test_reconstruction"] - record["test_kl"], abs=1e-4)
    assert record["test_kl"] >= 0   # closed-form KL of Gaussians
    shown = invoke("show", out)
    assert f"{record['test_elbo']:.2f} (q fitted to 40 points)" in shown.output


def test_a_run_with_validation_finds_its_moved_data_file(selected, data, tmp_path):
    """The moved file is checked against the rows the run saw: its training rows and the held-out ones."""
    out, _ = selected
    moved = tmp_path / "moved.npz"
    data.rename(moved)
    result = invoke("evaluate", out, "--dataset", moved, "--k", 10, "--limit", 3, "--checkpoint", "best")
    assert result.exit_code == 0, result.output
