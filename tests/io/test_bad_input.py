"""A catalogue of bad input: each gets one line `pyrovae: error: ...` naming the problem and the fix,
exit code 2, no traceback, and leaves every existing file as it was (a missing --out is not created)."""
from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.config import FitConfig
from pyrovae.workflows import fit

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--quiet", "--device", "cpu"]


def write_npz(path: Path, n: int = 200, d: int = 8, test: int = 40, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, train=rng.random((n, d), dtype=np.float32), test=rng.random((test, d), dtype=np.float32))
    return path


def snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots`` with the hash of its bytes."""
    state = {}
    for root in roots:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            state[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return state


def invoke(args: list[str]):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def assert_usage_error(result, *needles: str, code: int = 2) -> str:
    """Exactly one stderr line `pyrovae: error: ...` holding every needle, the exit code, no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert line.startswith("pyrovae: error: "), line
    assert "Traceback" not in result.output and result.stdout == ""
    for needle in needles:
        assert needle.lower() in line.lower(), (needle, line)
    return line


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny trained run (1 epoch) and a second one with another architecture (--hidden 8)."""
    root = tmp_path_factory.mktemp("base")
    data = write_npz(root / "data.npz")
    config = dict(dataset=str(data), hidden=(16,), latent_dim=2, batch_size=32, epochs=1, device="cpu")
    fit(FitConfig(**config), root / "run", progress=False)
    fit(FitConfig(**{**config, "hidden": (8,)}), root / "other", progress=False)
    return root


@pytest.fixture
def run(base, tmp_path):
    """A private copy of the base run."""
    shutil.copy(base / "data.npz", tmp_path / "data.npz")
    target = tmp_path / "run"
    shutil.copytree(base / "run", target)
    config = runs.read_config(target)
    config["config"]["dataset"] = str(tmp_path / "data.npz")
    runs.write_json(target / runs.CONFIG, config)
    return target


# ---------------------------------------------------------------- data files given to `fit --dataset`

def _bad_data(tmp_path: Path, name: str, writer, *needles: str, extra=()) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    path = data_dir / name
    writer(path)
    out = tmp_path / "out"
    before = snapshot(data_dir)
    result = invoke(["fit", "--dataset", path, "--out", out, "--epochs", "1", *TINY, *extra])
    assert_usage_error(result, *needles)
    assert snapshot(data_dir) == before
    assert not out.exists()


def _npz(**arrays):
    return lambda path: np.savez(path, **arrays)


def _npy(array, allow_pickle=False):
    return lambda path: np.save(path, array, allow_pickle=allow_pickle)


rng = np.random.default_rng(1)
GOOD = rng.random((50, 8), dtype=np.float32)


def with_value(value, at=(3, 2)):
    array = GOOD.copy()
    array[at] = value
    return array


DATA_CASES = {
    "nan-in-train-npz": ("d.npz", _npz(train=with_value(np.nan), test=GOOD), ["nan or inf", "1 row", "drop or impute"]),
    "inf-in-test-npz": ("d.npz", _npz(train=GOOD, test=with_value(np.inf)), ["['test']", "nan or inf", "impute"]),
    "neg-inf-in-npy": ("d.npy", _npy(with_value(-np.inf)), ["nan or inf", "impute"]),
    "beyond-float32": ("d.npy", _npy(np.full((20, 4), 1e300)), ["float32", "rescale"]),
    "bernoulli-outside-01": ("d.npz", _npz(train=GOOD * 255, test=GOOD * 255), ["bernoulli", "[0, 1]", "--likelihood normal"]),
    "bernoulli-negative": ("d.npz", _npz(train=GOOD - 0.5, test=GOOD), ["[0, 1]", "rescale"]),
    "one-dim-npy": ("d.npy", _npy(np.arange(10.0)), ["shape (10,)", "rows of features"]),
    "zero-dim-npy": ("d.npy", _npy(np.array(3.0)), ["shape ()", "rows of features"]),
    "one-dim-train-npz": ("d.npz", _npz(train=np.arange(10.0)), ["['train']", "at least 2 dims"]),
    "ragged-object-npy": ("d.npy", _npy(np.array([[1.0, 2.0], [3.0]], dtype=object), allow_pickle=True),
                          ["pickled python objects", "rectangular numeric array"]),
    "ragged-object-npz": ("d.npz", _npz(train=np.array([[1.0, 2.0], [3.0]], dtype=object)), ["pickled", "rectangular"]),
    "string-array": ("d.npy", _npy(np.array([["a", "b"], ["c", "d"]])), ["dtype", "numeric"]),
    "complex-array": ("d.npy", _npy(GOOD.astype(np.complex64)), ["complex", "real"]),
    "empty-npy": ("d.npy", _npy(np.zeros((0, 8), np.float32)), ["empty", "at least one row"]),
    "empty-train-npz": ("d.npz", _npz(train=np.zeros((0, 8), np.float32), test=GOOD), ["empty", "at least one row"]),
    "no-features": ("d.npy", _npy(np.zeros((10, 0), np.float32)), ["empty", "features"]),
    "single-row-npy": ("d.npy", _npy(GOOD[:1]), ["1 row", "too few", "'train' and 'test'"]),
    "test-feature-mismatch": ("d.npz", _npz(train=GOOD, test=rng.random((5, 9))), ["9 features", "8", "same feature size"]),
    "npz-without-train": ("d.npz", _npz(x=GOOD), ["no array named 'train'", "numpy.savez"]),
    "text-file": ("d.txt", lambda p: p.write_text("1,2,3\n"), ["not .npz or .npy", "numpy.save"]),
    "npz-that-is-text": ("d.npz", lambda p: p.write_text("hello, I am not a zip\n"), ["not a numpy array file", "re-save"]),
    "npy-that-is-text": ("d.npy", lambda p: p.write_text("hello\n"), ["not a numpy array file", "re-save"]),
    "npz-truncated": ("d.npz", lambda p: (np.savez(p, train=GOOD), p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
                      ["cannot read", "re-save"]),
    "npy-truncated": ("d.npy", lambda p: (np.save(p, GOOD), p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])),
                      ["cannot read", "re-save"]),
    "npy-header-only": ("d.npy", lambda p: (np.save(p, GOOD), p.write_bytes(p.read_bytes()[:10])),
                        ["cannot read", "re-save"]),
    "empty-file": ("d.npy", lambda p: p.write_bytes(b""), ["cannot read", "re-save"]),
    "path-is-a-folder": ("d.npy", lambda p: p.mkdir(), ["cannot read", "re-save"]),
}


@pytest.mark.parametrize("case", sorted(DATA_CASES))
def test_bad_data_file(tmp_path, case):
    name, writer, needles = DATA_CASES[case]
    _bad_data(tmp_path, name, writer, *needles)


def test_missing_data_file(tmp_path):
    out = tmp_path / "out"
    result = invoke(["fit", "--dataset", tmp_path / "nope.npz", "--out", out, *TINY])
    assert_usage_error(result, "does not exist", "mnist-sample")
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 file; see test_bad_data_file[path-is-a-folder]")
def test_unreadable_data_file(tmp_path):
    path = write_npz(tmp_path / "d.npz")
    path.chmod(0)
    try:
        assert_usage_error(invoke(["fit", "--dataset", path, "--out", tmp_path / "out", *TINY]), "cannot read")
    finally:
        path.chmod(0o644)
    assert not (tmp_path / "out").exists()


def test_bad_test_fraction_for_npy(tmp_path):
    _bad_data(tmp_path, "d.npy", _npy(GOOD), "--test-fraction", "(0, 1)", extra=["--test-fraction", "1.5"])


def test_single_row_train_in_npz_trains(tmp_path):
    """Decision: a one-row 'train' split with its own 'test' split is a (tiny) data set and trains."""
    np.savez(tmp_path / "d.npz", train=GOOD[:1], test=GOOD[:5])
    result = invoke(["fit", "--dataset", tmp_path / "d.npz", "--out", tmp_path / "out", "--epochs", "1", *TINY])
    assert result.exit_code == 0, result.output
    assert len(runs.read_jsonl(tmp_path / "out" / runs.METRICS)) == 1


# ---------------------------------------------------------------- RUN_DIR and --out

def test_run_dir_already_holds_a_run(run):
    before = snapshot(run.parent)
    result = invoke(["fit", "--dataset", run.parent / "data.npz", "--out", run, "--epochs", "1", *TINY])
    assert_usage_error(result, "already holds a run", "--resume", "--overwrite")
    assert snapshot(run.parent) == before


def test_resume_and_overwrite_contradict(run):
    before = snapshot(run.parent)
    result = invoke(["fit", "--out", run, "--resume", "--overwrite", "--epochs", "2", *TINY])
    assert_usage_error(result, "--resume and --overwrite", "pass one")
    assert snapshot(run.parent) == before


def test_resume_without_a_run(tmp_path):
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "empty", tmp_path / "missing"):
        assert_usage_error(invoke(["fit", "--out", out, "--resume", *TINY]), "no run to resume", "drop --resume")
    assert not (tmp_path / "missing").exists()
    assert list((tmp_path / "empty").iterdir()) == []


def test_out_under_a_regular_file(tmp_path):
    data = write_npz(tmp_path / "d.npz")
    (tmp_path / "file").write_text("I am a file\n")
    before = snapshot(tmp_path)
    result = invoke(["fit", "--dataset", data, "--out", tmp_path / "file" / "run", "--epochs", "1", *TINY])
    assert_usage_error(result, "cannot create --out", "writable folder")
    assert snapshot(tmp_path) == before


def test_out_is_a_regular_file(tmp_path):
    data = write_npz(tmp_path / "d.npz")
    (tmp_path / "file").write_text("I am a file\n")
    before = snapshot(tmp_path)
    result = invoke(["fit", "--dataset", data, "--out", tmp_path / "file", "--epochs", "1", *TINY])
    assert_usage_error(result, "is a file, not a folder", "folder path")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- options out of range or contradictory

OPTION_CASES = {
    "epochs-0": (["--epochs", "0"], ["--epochs", "at least 1"]),
    "batch-size-negative": (["--batch-size", "-1"], ["--batch-size", "at least 1"]),
    "particles-0": (["--particles", "0"], ["--particles", "at least 1"]),
    "particles-huge": (["--particles", "100000000000"], ["--particles", "too large"]),
    "lr-nan": (["--lr", "nan"], ["--lr", "positive"]),
    "lr-inf": (["--lr", "inf"], ["--lr", "positive"]),
    "lr-zero": (["--lr", "0"], ["--lr", "positive"]),
    "latent-dim-0": (["--latent-dim", "0"], ["--latent-dim", "at least 1"]),
    "latent-dim-huge": (["--latent-dim", "99999999999"], ["--latent-dim", "too large"]),
    "hidden-letters": (["--hidden", "a,b"], ["--hidden", "comma list of integers", "--hidden 400"]),
    "hidden-empty-part": (["--hidden", "16,,16"], ["--hidden", "comma list"]),
    "hidden-zero": (["--hidden", "0"], ["--hidden", "width <= 0"]),
    "hidden-negative": (["--hidden", "16,-4"], ["--hidden", "width <= 0"]),
    "hidden-float": (["--hidden", "1.5"], ["--hidden", "integers"]),
    "hidden-huge": (["--hidden", "99999999999"], ["--hidden", "at most"]),
    "beta-negative": (["--beta", "-1"], ["--beta", "got -1"]),
    "beta-nan": (["--beta", "nan"], ["--beta", "got nan"]),
    "kl-warmup-negative": (["--kl-warmup", "-1"], ["--kl-warmup", ">= 0"]),
    "test-fraction-1": (["--test-fraction", "1"], ["--test-fraction", "(0, 1)"]),
    "seed-negative": (["--seed", "-1"], ["--seed", "2**32"]),
    "seed-huge": (["--seed", str(2**40)], ["--seed", "2**32"]),
    "jit-with-iwae": (["--jit", "--elbo", "iwae"], ["--jit", "iwae", "drop --jit"]),
    "dynamic-binarize-with-normal": (["--binarize", "dynamic", "--likelihood", "normal"],
                                     ["--binarize dynamic", "--likelihood bernoulli", "--binarize none"]),
    "sigma-nan": (["--likelihood", "normal", "--sigma", "nan"], ["--sigma", "positive number"]),
    "sigma-negative": (["--likelihood", "normal", "--sigma", "-1"], ["--sigma", "positive number"]),
    "epochs-not-a-number": (["--epochs", "ten"], ["--epochs", "not a valid integer", "--help"]),
    "unknown-choice": (["--likelihood", "poisson"], ["--likelihood", "bernoulli", "--help"]),
    "unknown-option": (["--bogus"], ["no such option", "--help"]),
    "device-unknown": (["--device", "tpu9"], ["--device", "cpu"]),
}


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_bad_option(tmp_path, case):
    extra, needles = OPTION_CASES[case]
    data = write_npz(tmp_path / "d.npz")
    before = snapshot(tmp_path)
    out = tmp_path / "out"
    # the option under test comes last, so it overrides TINY's --device / --hidden / ...
    result = invoke(["fit", "--dataset", data, "--out", out, "--epochs", "1", *TINY, *extra])
    assert_usage_error(result, *needles)
    assert snapshot(tmp_path) == before
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_device_cuda_without_cuda(tmp_path):
    data = write_npz(tmp_path / "d.npz")
    result = invoke(["fit", "--dataset", data, "--out", tmp_path / "out", *TINY, "--device", "cuda"])
    assert_usage_error(result, "cuda", "not available", "--device cpu")
    assert not (tmp_path / "out").exists()


def test_no_command_and_unknown_command():
    result = invoke(["nonsense"])
    assert_usage_error(result, "no such command")


# ---------------------------------------------------------------- evaluate / compare (when they exist)

def _needs(command: str) -> None:
    if command not in cli.commands:
        pytest.skip(f"`pyrovae {command}` does not exist yet")


def test_evaluate_k_zero(run):
    _needs("evaluate")
    before = snapshot(run.parent)
    assert_usage_error(invoke(["evaluate", run, "--k", "0"]), "--k")
    assert snapshot(run.parent) == before


def test_evaluate_missing_run(tmp_path):
    _needs("evaluate")
    assert_usage_error(invoke(["evaluate", tmp_path / "nope"]), "nope")
    assert not (tmp_path / "nope").exists()


def test_compare_missing_runs(tmp_path):
    _needs("compare")
    assert_usage_error(invoke(["compare", tmp_path / "a"]), str(tmp_path / "a"))
    assert not (tmp_path / "a").exists()


# ---------------------------------------------------------------- checkpoints and run folders

def _truncate(run: Path, base: Path) -> None:
    path = run / runs.CHECKPOINT
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _swap_architecture(run: Path, base: Path) -> None:
    shutil.copy(base / "other" / runs.CHECKPOINT, run / runs.CHECKPOINT)


def _format_99(run: Path, base: Path) -> None:
    state = torch.load(run / runs.CHECKPOINT, weights_only=True)
    state["format_version"] = 99
    torch.save(state, run / runs.CHECKPOINT)


def _garbage(run: Path, base: Path) -> None:
    (run / runs.CHECKPOINT).write_bytes(os.urandom(2000))


def _tensor_not_dict(run: Path, base: Path) -> None:
    torch.save(torch.zeros(3), run / runs.CHECKPOINT)


CHECKPOINT_CASES = {
    "missing": (lambda run, base: (run / runs.CHECKPOINT).unlink(), ["no checkpoint", "pyrovae fit --out"]),
    "truncated": (_truncate, ["truncated or not a pyrovae checkpoint", "retrain or restore"]),
    "garbage": (_garbage, ["not a pyrovae checkpoint", "retrain or restore"]),
    "tensor-not-dict": (_tensor_not_dict, ["not a pyrovae checkpoint", "retrain"]),
    "other-architecture": (_swap_architecture, ["does not match", "architecture", "retrain or restore"]),
    "format-99": (_format_99, ["format 99", "format 2", "pyrovae version that wrote it"]),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINT_CASES))
def test_bad_checkpoint_sample(run, base, case):
    damage, needles = CHECKPOINT_CASES[case]
    damage(run, base)
    before = snapshot(run.parent)
    out = run.parent / "x.png"
    assert_usage_error(invoke(["sample", run, "--out", out, "--device", "cpu"]), *needles)
    assert snapshot(run.parent) == before
    assert not out.exists()


@pytest.mark.parametrize("case", sorted(set(CHECKPOINT_CASES) - {"missing"}))   # no checkpoint: tests/io/test_runs.py
def test_bad_checkpoint_resume(run, base, case):
    damage, needles = CHECKPOINT_CASES[case]
    damage(run, base)
    before = snapshot(run.parent)
    assert_usage_error(invoke(["fit", "--out", run, "--resume", "--epochs", "2", *TINY]), *needles)
    assert snapshot(run.parent) == before


def test_sample_run_dir_missing(tmp_path):
    result = invoke(["sample", tmp_path / "nope", "--out", tmp_path / "x.png"])
    assert_usage_error(result, "not a folder", "--out folder of `pyrovae fit`")
    assert not (tmp_path / "x.png").exists() and not (tmp_path / "nope").exists()


def test_sample_folder_without_config(tmp_path):
    (tmp_path / "notarun").mkdir()
    result = invoke(["sample", tmp_path / "notarun", "--out", tmp_path / "x.png"])
    assert_usage_error(result, "not a pyrovae run", "config.json")
    assert not (tmp_path / "x.png").exists()


def test_corrupt_config_json(run):
    (run / runs.CONFIG).write_text("{not json")
    before = snapshot(run.parent)
    for args in (["sample", run, "--out", run.parent / "x.png"], ["fit", "--out", run, "--resume", *TINY]):
        assert_usage_error(invoke(args), "not valid json", "restore")
    assert snapshot(run.parent) == before
    assert not (run.parent / "x.png").exists()


@pytest.mark.parametrize("out, needles", [
    ("x.jpg", ["must end in .png"]),
    ("missing/x.png", ["does not exist", "create it first"]),
    ("file/x.png", ["does not exist", "create it first"]),
    ("folder.png", ["is a folder", "file name"]),
])
def test_sample_bad_out(run, out, needles):
    (run.parent / "file").write_text("a file\n")
    (run.parent / "folder.png").mkdir()
    before = snapshot(run.parent)
    assert_usage_error(invoke(["sample", run, "--out", run.parent / out]), *needles)
    assert snapshot(run.parent) == before


def test_sample_of_a_non_image_run(run):
    before = snapshot(run.parent)
    assert_usage_error(invoke(["sample", run, "--out", run.parent / "x.png", "--device", "cpu"]),
                       "not images", "latent-map")
    assert snapshot(run.parent) == before
    assert not (run.parent / "x.png").exists()


def test_sample_n_zero(run):
    assert_usage_error(invoke(["sample", run, "--out", run.parent / "x.png", "--n", "0"]), "--n", "--help")
