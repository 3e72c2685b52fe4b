"""Answers at a glance: ``evaluate``'s one line on stderr (the JSON's numbers, and whether to trust
them), ``evaluate --figure``, and ``show``'s marks on numbers to beware of."""
import json
import re
import shutil

import numpy as np
import pyro
import pytest
from click.testing import CliRunner
from PIL import Image

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.pictures.figures import EVALUATION_SIZE
from pyrovae.workflows.evaluating import headline

LINE = re.compile(r"^log p\(x\) = (-?\d+\.\d\d) ± (\d+\.\d\d) nats \((IS|AIS), (.*), n=(\d+), proposal (\w+)\) — (.*)$")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Two epochs of a tiny VAE on 150 training and 40 test rows of 8 features."""
    folder = tmp_path_factory.mktemp("glance")
    rng = np.random.default_rng(0)
    np.savez(folder / "small.npz", train=rng.random((150, 8), dtype=np.float32),
             test=rng.random((40, 8), dtype=np.float32))
    pyro.clear_param_store()
    result = invoke("fit", "--dataset", folder / "small.npz", "--out", folder / "run", "--epochs", 2, "--hidden", 16,
                    "--latent-dim", 2, "--batch-size", 50, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return folder / "run"


def evaluated(run, *args):
    result = invoke("evaluate", run, "--device", "cpu", *args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("log p(x) =")]
    assert len(lines) == 1, result.stderr
    return json.loads(result.stdout), lines[0]


def test_evaluate_says_the_result_in_one_line(run):
    out, line = evaluated(run, "--k", 30, "--limit", 12)
    value, se, method, how, n, proposal, verdict = LINE.match(line).groups()
    assert float(value) == round(out["log_likelihood"], 2) and float(se) == round(out["log_likelihood_se"], 2)
    assert (method, how, int(n), proposal) == ("IS", "K=30", 12, "guide")
    word = "reliable" if out["reliable"] else "unreliable"
    assert verdict == f"{word}: k-hat > 0.7 for {out['khat_frac_gt_0_7']:.1%} of points"


def test_the_line_says_when_k_hat_is_unknown_and_what_ais_saw(run):
    _, line = evaluated(run, "--k", 10, "--limit", 4, "--no-record")
    assert line.endswith("— k-hat unknown (too few draws to fit a tail)"), line
    out, line = evaluated(run, "--method", "ais", "--steps", 4, "--chains", 2, "--limit", 4, "--no-record")
    value, _, method, how, n, _, verdict = LINE.match(line).groups()
    assert method == "AIS" and how == "T=4, chains=2" and int(n) == 4
    assert float(value) == round(out["log_likelihood"], 2)
    assert verdict.startswith(f"acceptance {out['accept_rate_mean']:.2f}; ")


def test_headline_of_an_unreliable_estimate():
    summary = {"method": "is", "log_likelihood": -103.9412, "log_likelihood_se": 0.8811, "k": 5000, "n": 1000,
               "proposal": "guide", "reliable": False, "khat_frac_gt_0_7": 0.997}
    assert headline(summary) == ("log p(x) = -103.94 ± 0.88 nats (IS, K=5000, n=1000, proposal guide) — "
                                 "unreliable: k-hat > 0.7 for 99.7% of points")


def test_evaluate_draws_its_figure(run, tmp_path):
    out, _ = evaluated(run, "--k", 30, "--limit", 12, "--figure", tmp_path / "e.png", "--no-record")
    assert out["figure"] == str(tmp_path / "e.png")
    with Image.open(tmp_path / "e.png") as image:
        assert image.format == "PNG" and image.size == EVALUATION_SIZE
        pixels = np.asarray(image.convert("L"))
    assert pixels[:30].min() < 100   # the caption
    result = invoke("evaluate", run, "--k", 30, "--figure", tmp_path / "e.jpg")   # refused before any work
    assert result.exit_code == 2 and result.stderr.startswith("pyrovae: error:") and "--figure" in result.stderr
    assert not (tmp_path / "e.jpg").exists()


def test_show_marks_unreliable_stale_and_other_points(run, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    (other / runs.EVALUATIONS).unlink(missing_ok=True)
    (run / runs.EVALUATIONS).unlink(missing_ok=True)
    reliable = evaluated(run, "--k", 30, "--limit", 12)[0]["reliable"]
    assert evaluated(other, "--k", 30, "--limit", 20)[0]["reliable"] is not None
    # a record of this checkpoint at an earlier epoch (as evaluate --checkpoint best would make) whose
    # k-hat said unreliable
    record = runs.read_jsonl(other / runs.EVALUATIONS)[-1]
    record["options"]["epoch"] = 1
    record["summary"]["reliable"] = False
    with open(other / runs.EVALUATIONS, "a") as handle:
        handle.write(json.dumps(record) + "\n")
    result = invoke("show", run, other)
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["runs"]
    mark = [] if reliable else ["unreliable"]
    assert first["flags"] == {"log p(x), IS": [*mark, "other points: test n=12"]}
    assert second["flags"] == {"log p(x), IS": ["unreliable", "stale: epoch 1 of 2", "other points: test n=20"]}
    assert "[unreliable; stale: epoch 1 of 2; other points: test n=20]" in result.stderr
    alone = json.loads(invoke("show", run).stdout)["runs"][0]
    assert alone["flags"] == ({"log p(x), IS": mark} if mark else {})   # this epoch, no other run beside it
