"""The ``pyrovae`` command through click's CliRunner: JSON on stdout, one-line errors, exit codes."""
import json
import math

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner

import pyrovae.cli.main as cli_main
import pyrovae.core.distributed as distributed
from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.data import load_dataset
from pyrovae.evaluation import diagnostics
from pyrovae.workflows import load_run

SMALL = ["--latent-dim", "2", "--hidden", "16", "--batch-size", "500", "--lr", "0.01", "--quiet",
         "--device", "cpu"]
RUN_FILES = (runs.CONFIG, runs.CHECKPOINT, runs.METRICS, "samples.png", "reconstructions.png")
# an untrained Bernoulli decoder has logits near 0: log p(x | z) ≈ -784 log 2 per MNIST digit (fresh
# VAEs with 32 hidden units and 4 latents measure -547..-552 nats, see test_train.py)
UNTRAINED_ELBO = -784 * math.log(2)   # -543.4 nats



def invoke(*args):
    # click >= 8.2 keeps stderr apart by default (result.stderr); older versions need mix_stderr=False
    try:
        runner = CliRunner(mix_stderr=False)
    except TypeError:
        runner = CliRunner()
    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=True)


def one_json(result):
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """One epoch on mnist-sample (the one small data set with an image shape): 10 steps."""
    pyro.clear_param_store()
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    result = invoke("fit", "--dataset", "mnist-sample", "--epochs", 1, "--out", run_dir, *SMALL)
    return run_dir, result


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    data = load_dataset("mnist-sample")
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, train=data.train[:200].numpy(), test=data.test[:50].numpy())
    return path


def test_fit_end_to_end(image_run):
    run_dir, result = image_run
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert "Traceback" not in result.stderr
    out = one_json(result)
    assert {"test_elbo", "train_elbo", "epochs", "seconds", "run_dir"} <= set(out)
    assert out["epochs"] == 1 and out["run_dir"] == str(run_dir)
    assert out["test_elbo"] < 0 and out["train_elbo"] < 0 and out["seconds"] >= 0
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    assert len(runs.read_jsonl(run_dir / runs.METRICS)) == 1
    saved = json.loads((run_dir / runs.CONFIG).read_text())
    assert saved["config"]["hidden"] == [16] and saved["config"]["latent_dim"] == 2
    assert out["test_elbo"] == runs.read_jsonl(run_dir / runs.METRICS)[-1]["test_elbo"]


def test_fit_on_an_npz_file(tiny_npz, tmp_path):
    result = invoke("fit", "--dataset", tiny_npz, "--epochs", 2, "--out", tmp_path / "run", *SMALL[:-5],
                    "--batch-size", 100, "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = one_json(result)
    assert out["epochs"] == 2 and out["test_elbo"] < 0
    for name in (runs.CONFIG, runs.CHECKPOINT, runs.METRICS):
        assert (tmp_path / "run" / name).is_file()
    # resume to 3 epochs through the CLI
    result = invoke("fit", "--out", tmp_path / "run", "--resume", "--epochs", 3, "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    assert one_json(result)["epochs"] == 3


@pytest.mark.parametrize("command,extra", [("sample", ["--n", 8, "--seed", 1]), ("sample", ["--show", "draws"]),
                                           ("reconstruct", ["--n", 4]), ("latent-map", ["--n", 50])])
def test_image_commands(image_run, tmp_path, command, extra):
    run_dir, fitted = image_run
    assert fitted.exit_code == 0
    out_png = tmp_path / f"{command}.png"
    result = invoke(command, run_dir, "--out", out_png, "--device", "cpu", *extra)
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = one_json(result)
    assert out["out"] == str(out_png) and out["run_dir"] == str(run_dir)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if command == "latent-map":
        assert out["projection"] == "identity" and out["points"] == 50
    if command == "reconstruct":
        assert out["n"] == 4 and out["split"] == "test"


def test_sample_is_reproducible_by_seed(image_run, tmp_path):
    run_dir, _ = image_run
    pngs = []
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        result = invoke("sample", run_dir, "--out", tmp_path / f"{name}.png", "--seed", seed, "--device", "cpu")
        assert result.exit_code == 0
        pngs.append((tmp_path / f"{name}.png").read_bytes())
    assert pngs[0] == pngs[1] and pngs[0] != pngs[2]


def assert_usage_error(result):
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("pyrovae: error:"), lines[0]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    assert result.stdout == ""


def _bad_npz(tmp_path):
    path = tmp_path / "twos.npz"
    np.savez(path, train=np.full((20, 4), 2.0, dtype=np.float32), test=np.full((5, 4), 2.0, dtype=np.float32))
    return path


BAD_FIT = {  # case: (options, a phrase the one-line message must contain)
    "zero epochs": (lambda tmp: ["--epochs", 0], "--epochs must be at least 1"),
    "negative epochs": (lambda tmp: ["--epochs", -3], "--epochs must be at least 1"),
    "unknown likelihood": (lambda tmp: ["--likelihood", "poisson"], "--likelihood"),
    "bernoulli data outside [0, 1]": (lambda tmp: ["--dataset", _bad_npz(tmp)], "needs data in [0, 1]"),
    "missing data file": (lambda tmp: ["--dataset", tmp / "nope.npz"], "does not exist"),
    "malformed hidden": (lambda tmp: ["--hidden", "16,x"], "--hidden '16,x'"),
    "zero hidden width": (lambda tmp: ["--hidden", "16,0"], "width <= 0"),
    "zero beta": (lambda tmp: ["--beta", 0], "--beta"),
    "bad sigma": (lambda tmp: ["--likelihood", "normal", "--sigma", "-1", "--dataset", "toy2d"], "--sigma"),
    "binarize with normal": (lambda tmp: ["--likelihood", "normal", "--binarize", "static", "--dataset", "toy2d"],
                             "--binarize static"),
    "jit with iwae": (lambda tmp: ["--elbo", "iwae", "--jit"], "--jit"),
    "resume and overwrite": (lambda tmp: ["--resume", "--overwrite"], "contradict"),
    "resume without a run": (lambda tmp: ["--resume"], "no run to resume"),
}


@pytest.mark.parametrize("case", list(BAD_FIT))
def test_fit_bad_options(tmp_path, case):
    options, phrase = BAD_FIT[case]
    out = tmp_path / "out"
    result = invoke("fit", "--out", out, "--epochs", 1, "--quiet", *options(tmp_path))
    assert_usage_error(result)
    assert phrase in result.stderr, result.stderr
    assert not out.exists(), sorted(p.name for p in out.iterdir())


def test_fit_cuda_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    result = invoke("fit", "--device", "cuda", "--out", out, "--epochs", 1)
    assert_usage_error(result)
    assert "CUDA" in result.stderr
    assert not out.exists()


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_fit_into_an_existing_run_is_refused(image_run):
    run_dir, fitted = image_run
    assert fitted.exit_code == 0
    before = snapshot(run_dir)
    result = invoke("fit", "--dataset", "mnist-sample", "--epochs", 1, "--out", run_dir, *SMALL)
    assert_usage_error(result)
    assert "already holds a run" in result.stderr
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("command", ["sample", "reconstruct", "latent-map"])
def test_image_commands_bad_input(image_run, tmp_path, command):
    run_dir, _ = image_run
    before = snapshot(run_dir)
    # not a .png
    assert_usage_error(invoke(command, run_dir, "--out", tmp_path / "x.jpg"))
    # a folder that does not exist
    assert_usage_error(invoke(command, run_dir, "--out", tmp_path / "missing" / "x.png"))
    # not a run
    assert_usage_error(invoke(command, tmp_path / "norun", "--out", tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "missing").exists()
    assert snapshot(run_dir) == before


def test_sample_on_non_image_run_is_a_usage_error(tiny_npz, tmp_path):
    result = invoke("fit", "--dataset", tiny_npz, "--epochs", 1, "--out", tmp_path / "run", "--hidden", 8,
                    "--latent-dim", 2, "--batch-size", 100, "--quiet")
    assert result.exit_code == 0
    result = invoke("sample", tmp_path / "run", "--out", tmp_path / "s.png")
    assert_usage_error(result)
    assert "not images" in result.stderr
    assert not (tmp_path / "s.png").exists()


def test_fit_unusable_device_is_a_usage_error(tmp_path):
    out = tmp_path / "out"
    result = invoke("fit", "--device", "mps", "--out", out, "--epochs", 1)
    assert not out.exists()
    assert_usage_error(result)
    assert "'mps'" in result.stderr and "use auto, cpu, cuda" in result.stderr


def test_npz_of_image_arrays_keeps_its_image_shape(tmp_path):
    """Rows shaped [H, W] are images: fit writes grids and `sample` accepts the run."""
    images = torch.rand(64, 6, 5, generator=torch.Generator().manual_seed(0)).numpy()
    np.savez(tmp_path / "tiles.npz", train=images[:48], test=images[48:])
    assert load_dataset(str(tmp_path / "tiles.npz")).image_shape == (1, 6, 5)
    out = tmp_path / "run"
    result = invoke("fit", "--dataset", tmp_path / "tiles.npz", "--epochs", 1, "--hidden", 8, "--latent-dim", 2,
                    "--out", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert (out / "samples.png").stat().st_size > 0 and (out / "reconstructions.png").stat().st_size > 0
    result = invoke("sample", out, "--n", 4, "--out", tmp_path / "s.png")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 4


def test_evaluate_end_to_end(image_run, tmp_path):
    """`evaluate` prints one JSON object with the estimate, its SE, the bounds and diagnostics, and
    writes one per-point row per evaluated datapoint; the bounds obey L_1 <= L_K up to noise."""
    run_dir, _ = image_run
    per_point = tmp_path / "points.csv"
    result = invoke("evaluate", run_dir, "--k", 60, "--limit", 12, "--batch-size", 5, "--chunk-size", 25,
                    "--per-point", per_point, "--device", "cpu")
    assert result.exit_code == 0, (result.stderr, result.exception)
    out = one_json(result)
    keys = {"log_likelihood", "log_likelihood_se", "elbo", "iwae_bounds", "k", "n", "khat_frac_gt_0_7",
            "khat_frac_gt_0_5", "ess_frac_mean", "active_units", "seconds"}
    assert keys <= set(out)
    bounds = {bound["k"]: bound["bound"] for bound in out["iwae_bounds"]}
    assert out["k"] == 60 and out["n"] == 12 and list(bounds) == [1, 5, 50, 60]   # in increasing k, in the JSON
    assert bounds[60] == out["log_likelihood"]
    assert bounds[1] <= out["log_likelihood"] + 3 * out["log_likelihood_se"]
    assert 0 < out["ess_frac_mean"] <= 1 and 0 <= out["active_units"] <= 2
    rows = per_point.read_text().splitlines()
    assert rows[0].startswith("index,log_px,elbo") and len(rows) == 13
    # the summary is the mean of the per-point values; the CSV holds them to 17 significant digits,
    # so the means agree to float64 rounding (~1e-13 at ~300 nats)
    table = np.genfromtxt(per_point, delimiter=",", names=True)
    assert table["log_px"].mean() == pytest.approx(out["log_likelihood"], abs=1e-9)
    assert table["elbo"].mean() == pytest.approx(out["elbo"], abs=1e-9)
    # active units: those of the encoder's means on the same 12 test points, computed directly
    # (variances 0.34 and 1.06 against the 0.01 threshold, so float rounding cannot flip the count)
    run = load_run(run_dir, device="cpu")
    with torch.no_grad():
        means = run.vae.guide.encode("z", run.points("test", 12)[0][0])[0]
    assert out["active_units"] == diagnostics.active_units(means)


def test_evaluate_meanfield_run_fits_test_points(tmp_path, tiny_npz):
    run_dir = tmp_path / "mf"
    # --lr 0.03: with the default 1e-3 the 2 decoder steps of one epoch leave the ELBOs and log p̂ at
    # -543..-551 nats (seeds 0-3), as untrained, so the checks of learning below would fail
    result = invoke("fit", "--dataset", tiny_npz, "--guide", "meanfield", "--epochs", 1, "--out", run_dir,
                    "--hidden", 16, "--latent-dim", 2, "--batch-size", 100, "--lr", 0.03, "--quiet")
    assert result.exit_code == 0, result.stderr
    fitted = one_json(result)
    out = one_json(invoke("evaluate", run_dir, "--k", 20, "--limit", 5, "--device", "cpu"))
    assert out["proposal"] == "fit" and out["fit_steps"] >= 1 and out["n"] == 5
    # learning happened: over seeds 0-3 the test-time-fit ELBO of fit is -379..-394 nats and log p̂ of the
    # first 5 test points -379..-395; 100 nats above an untrained decoder leaves >= 45 nats to spare
    assert fitted["test_elbo"] > UNTRAINED_ELBO + 100, fitted["test_elbo"]
    assert out["log_likelihood"] > UNTRAINED_ELBO + 100, out["log_likelihood"]
    out = one_json(invoke("evaluate", run_dir, "--k", 20, "--limit", 5, "--split", "train", "--device", "cpu"))
    assert out["proposal"] == "guide" and out["n"] == 5
    # training points through their trained rows: -416..-455 nats over seeds 0-3 (>= 48 to spare)
    assert out["log_likelihood"] > UNTRAINED_ELBO + 40, out["log_likelihood"]
    assert_usage_error(invoke("evaluate", run_dir, "--proposal", "guide", "--device", "cpu"))


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "after-an-error"])
def test_a_torchrun_worker_leaves_by_end_process_and_tears_down_only_a_finished_command(monkeypatch, finished):
    """Every exit of a torchrun worker skips the interpreter's exit (gloo's destructors may abort
    it, cli/main.py end_process); only a finished command tears its process group down first."""
    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "teardown", lambda: calls.append("teardown"))

    def exit_now(code):
        calls.append(("os._exit", code))
        raise SystemExit(code)   # the test process goes on

    monkeypatch.setattr(cli_main.os, "_exit", exit_now)
    with pytest.raises(SystemExit):
        if finished:
            cli_main.leave(0, finished=True)
        else:
            cli_main.fail("bad input", 2)
    assert calls == (["teardown", ("os._exit", 0)] if finished else [("os._exit", 2)])


def test_a_process_alone_leaves_by_sys_exit(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli_main.os, "_exit", lambda code: pytest.fail("os._exit outside torchrun"))
    with pytest.raises(SystemExit) as leaving:
        cli_main.leave(3)
    assert leaving.value.code == 3
