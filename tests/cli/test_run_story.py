"""What a run directory tells a user (issue 15): the pictures, the curves, TensorBoard, the
record of every evaluation, and `pyrovae show`."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from click.testing import CliRunner

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.pictures import figures

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "250", "--quiet", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("story") / "run"
    result = invoke("fit", "--dataset", "mnist-sample", "--out", out, "--epochs", 3, "--curves-every", 0,
                    "--kl-warmup", 2, *TINY)
    assert result.exit_code == 0, result.output
    return out


def test_fit_draws_labelled_pictures_and_curves(run):
    # the caption (run, epoch, model, ELBO) takes one to three lines
    assert png_size(run / "samples.png") in [figures.grid_figure_size(64, (1, 28, 28), caption_lines=lines)
                                             for lines in (1, 2, 3)]
    width, height = png_size(run / "reconstructions.png")
    assert width == figures.grid_figure_size(32, (1, 28, 28), caption_lines=1, reconstructions=True)[0]
    assert png_size(run / "curves.png") == figures.CURVES_SIZE
    records = runs.read_jsonl(run / runs.METRICS)
    assert len(records) == 3 and all("lr" in r and "beta" in r for r in records)
    # one point per recorded epoch
    assert figures.training_curves(records, run / "again.png") == 3
    (run / "again.png").unlink()


def test_tensorboard_event_file_holds_the_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out = tmp_path / "run"
    assert invoke("fit", "--dataset", "mnist-sample", "--out", out, "--epochs", 2, "--tensorboard",
                  *TINY).exit_code == 0
    accumulator = EventAccumulator(str(out / "tensorboard"))
    accumulator.Reload()
    tags = set(accumulator.Tags()["scalars"])
    assert {"train/elbo", "test/elbo", "train/kl", "test/reconstruction", "run/beta", "run/lr"} <= tags
    assert [event.step for event in accumulator.Scalars("test/elbo")] == [1, 2]
    assert {"samples", "reconstructions"} <= set(accumulator.Tags()["images"])


def test_every_evaluation_is_recorded_once_and_bad_input_never(run):
    path = run / runs.EVALUATIONS
    path.unlink(missing_ok=True)
    assert invoke("evaluate", run, "--k", 30, "--limit", 5).exit_code == 0
    assert invoke("compare", run, "--k", 30, "--limit", 5, "--steps", 10).exit_code == 0
    assert invoke("bdmc", run, "--n", 3, "--steps", 3, "--chains", 2, "--is-k", 10).exit_code == 0
    assert invoke("evaluate", run, "--k", 30, "--limit", 5, "--no-record").exit_code == 0
    assert invoke("evaluate", run, "--k", 0).exit_code == 2                     # bad input: nothing recorded
    assert invoke("evaluate", run, "--k", 30, "--per-point", "out.txt").exit_code == 2
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["command"] for r in records] == ["evaluate", "compare", "bdmc"]
    for record in records:
        assert {"options", "summary", "versions", "time"} <= record.keys()
        assert record["options"]["seed"] == 0 and record["versions"]["pyro"]
    assert records[0]["summary"]["log_likelihood"] < 0 and records[0]["options"]["k"] == 30


def test_show_lines_runs_up_and_refuses_what_is_not_a_run(run, tmp_path):
    result = invoke("show", run, run)
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert len(shown["runs"]) == 2 and shown["runs"][0]["training"]["epochs"] == 3
    assert "test ELBO" in result.stderr and "guide" in result.stderr
    for bad in (tmp_path / "missing", tmp_path):
        result = invoke("show", bad)
        assert result.exit_code == 2
        lines = [line for line in result.stderr.splitlines() if line.startswith("pyrovae:")]
        assert len(lines) == 1 and "pass the --out folder of `pyrovae fit`" in lines[0]


def test_sample_shows_decoder_means_by_default(run, tmp_path):
    result = invoke("sample", run, "--out", tmp_path / "s.png", "--n", 8)
    assert result.exit_code == 0 and json.loads(result.stdout)["shows"] == "decoder means E[x | z]"
    result = invoke("reconstruct", run, "--out", tmp_path / "r.png", "--n", 8)
    assert result.exit_code == 0 and png_size(tmp_path / "r.png")[0] > 0
