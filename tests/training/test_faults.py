"""Faults during training: NaN loss, SIGINT/SIGTERM, bit-identical resume, atomic writes, the RUN_DIR lock."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import pyrovae.workflows.fitting as train_module
from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.workflows import load_run

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--quiet", "--device", "cpu"]
STEPS_PER_EPOCH = 7   # 200 rows / batch 32
PYROVAE = [sys.executable, "-m", "pyrovae.cli.main"]


@pytest.fixture
def data(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, train=rng.random((200, 8), dtype=np.float32), test=rng.random((40, 8), dtype=np.float32))
    return path


def invoke(args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def fit_args(data: Path, out: Path, epochs: int, *extra) -> list:
    return ["fit", "--dataset", data, "--out", out, "--epochs", epochs, *TINY, *extra]


def one_error_line(result, code: int) -> str:
    """The one ``pyrovae: error:`` line (``pyrovae: interrupted:`` for exit code 130), no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.startswith("pyrovae:") or "Traceback" in line]
    kind = "interrupted" if code == 130 else "error"
    assert len(lines) == 1 and lines[0].startswith(f"pyrovae: {kind}: "), result.stderr
    return lines[0]


def no_temp_files(run: Path) -> None:
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


def patch_objective(monkeypatch, hook):
    """Wrap every objective `fit` makes: ``hook(call_number, loss)`` sees (and may replace) each step's loss."""
    real = train_module.make_objective
    calls = [0]

    class Wrapped:
        def __init__(self, objective):
            self._objective = objective

        def __getattr__(self, name):
            return getattr(self._objective, name)

        def differentiable_loss(self, *args, **kwargs):
            calls[0] += 1
            return hook(calls[0], self._objective.differentiable_loss(*args, **kwargs))

    monkeypatch.setattr(train_module, "make_objective", lambda *a, **k: Wrapped(real(*a, **k)))
    return calls


def without_timing(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k and "time" not in k} for r in records]


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical parameters, optimizer state and metrics (timing fields aside)."""
    state_a, state_b = runs.load_checkpoint(a), runs.load_checkpoint(b)
    assert state_a["epoch"] == state_b["epoch"] and state_a["step"] == state_b["step"] == 0
    assert state_a["model"].keys() == state_b["model"].keys()
    for key in state_a["model"]:
        assert torch.equal(state_a["model"][key], state_b["model"][key]), key
    assert _flat(state_a["optimizer"]) == _flat(state_b["optimizer"])
    assert without_timing(runs.read_jsonl(a / runs.METRICS)) == without_timing(runs.read_jsonl(b / runs.METRICS))


def _flat(value):
    """A comparable form of a nested state (tensors by bytes)."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, tuple(value.shape), value.cpu().numpy().tobytes())
    if isinstance(value, dict):
        return {key: _flat(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_flat(item) for item in value]
    return value


# ---------------------------------------------------------------- NaN / inf loss

@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_keeps_last_good_checkpoint(tmp_path, data, monkeypatch, bad):
    run, saved = tmp_path / "run", {}
    bad_call = STEPS_PER_EPOCH + 3   # epoch 2, step 3

    def hook(call, loss):
        if call == STEPS_PER_EPOCH + 1:   # first step of epoch 2: the checkpoint is epoch 1's
            saved["bytes"] = (run / runs.CHECKPOINT).read_bytes()
        return loss * bad if call == bad_call else loss

    patch_objective(monkeypatch, hook)
    line = one_error_line(invoke(fit_args(data, run, 3)), code=1)
    assert "epoch 2, step 3" in line and "last good checkpoint" in line and "--lr" in line, line
    assert ("nan" if bad != bad else "inf") in line
    assert (run / runs.CHECKPOINT).read_bytes() == saved["bytes"]
    assert load_run(run, device="cpu").epoch == 1
    assert [m["epoch"] for m in runs.read_jsonl(run / runs.METRICS)] == [1]
    no_temp_files(run)


def test_non_finite_loss_in_first_epoch_says_no_checkpoint(tmp_path, data, monkeypatch):
    patch_objective(monkeypatch, lambda call, loss: loss * float("nan") if call == 2 else loss)
    line = one_error_line(invoke(fit_args(data, tmp_path / "run", 2)), code=1)
    assert "epoch 1, step 2" in line and "no checkpoint was written" in line, line
    assert not (tmp_path / "run" / runs.CHECKPOINT).exists()


# ---------------------------------------------------------------- signals and bit-identical resume

def interrupt_at(monkeypatch, at_call: int, sig=signal.SIGINT):
    def hook(call, loss):
        if call == at_call:
            os.kill(os.getpid(), sig)   # the handler sets the flag; fit finishes this step, then stops
        return loss
    return patch_objective(monkeypatch, hook)


@pytest.mark.parametrize("at_call, sig, extra", [
    (1, signal.SIGINT, []),                                   # first step of the run
    (STEPS_PER_EPOCH + 3, signal.SIGINT, []),                 # mid-epoch (epoch 2, step 3)
    (STEPS_PER_EPOCH, signal.SIGTERM, []),                    # the last step of epoch 1
    (STEPS_PER_EPOCH + 4, signal.SIGTERM, ["--binarize", "static", "--elbo", "iwae", "--particles", "2"]),
    (STEPS_PER_EPOCH + 2, signal.SIGINT, ["--elbo", "meanfield", "--kl-warmup", "2"]),
    # a mean-field guide's step is 2 local steps on the batch's own q_i, then the joint step
    (STEPS_PER_EPOCH + 5, signal.SIGINT, ["--guide", "meanfield", "--elbo", "meanfield", "--local-steps", "2"]),
], ids=["first-step", "mid-epoch", "end-of-epoch", "mid-epoch-iwae-static", "mid-epoch-meanfield-elbo",
        "mid-epoch-meanfield-guide"])
def test_interrupted_then_resumed_is_bit_identical(tmp_path, data, monkeypatch, at_call, sig, extra):
    epochs = 3
    reference = tmp_path / "reference"
    assert invoke(fit_args(data, reference, epochs, *extra)).exit_code == 0

    run = tmp_path / "run"
    calls_per_step = 1 + (int(extra[extra.index("--local-steps") + 1]) if "--local-steps" in extra else 0)
    with monkeypatch.context() as patch:
        interrupt_at(patch, (at_call - 1) * calls_per_step + 1, sig)   # at_call counts steps
        line = one_error_line(invoke(fit_args(data, run, epochs, *extra)), code=130)
    epoch, step = (at_call - 1) // STEPS_PER_EPOCH + 1, (at_call - 1) % STEPS_PER_EPOCH + 1
    assert f"stopped by signal {int(sig)} at epoch {epoch}, step {step}" in line, line
    assert f"pyrovae fit --out {run} --resume --epochs {epochs}" in line
    state = runs.load_checkpoint(run)
    assert (state["epoch"], state["step"]) == (epoch - 1, step)
    no_temp_files(run)

    result = invoke(["fit", "--out", run, "--resume", "--epochs", epochs, "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_run(run, reference)
    no_temp_files(run)


def test_resume_at_epoch_boundary_is_bit_identical(tmp_path, data):
    reference, run = tmp_path / "reference", tmp_path / "run"
    assert invoke(fit_args(data, reference, 4)).exit_code == 0
    assert invoke(fit_args(data, run, 2)).exit_code == 0
    assert invoke(["fit", "--out", run, "--resume", "--epochs", 3, "--quiet"]).exit_code == 0
    assert invoke(["fit", "--out", run, "--resume", "--epochs", 4, "--quiet"]).exit_code == 0
    assert_same_run(run, reference)
    result = invoke(["fit", "--out", run, "--resume", "--epochs", 4, "--quiet"])   # nothing left to do
    assert result.exit_code == 0 and "nothing to do" in result.stderr
    assert_same_run(run, reference)


def test_sigterm_to_a_real_process_then_resume(tmp_path):
    """A real `pyrovae fit` gets SIGTERM after its first epoch line; it checkpoints, says how to
    resume, exits 130; resuming gives the same parameters as an uninterrupted run."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    np.savez(data, train=rng.random((1000, 8), dtype=np.float32), test=rng.random((40, 8), dtype=np.float32))
    run, epochs = tmp_path / "run", 40
    proc = subprocess.Popen([*PYROVAE, *map(str, fit_args(data, run, epochs))], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("epoch 1:"):
                proc.send_signal(signal.SIGTERM)
                break
        stdout, rest = proc.communicate(timeout=120)
    finally:
        watchdog.cancel()
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(errors) == 1 and errors[0].startswith("pyrovae: interrupted: stopped by signal 15"), stderr
    assert f"Resume with: pyrovae fit --out {run} --resume --epochs {epochs}" in errors[0]
    assert stdout == ""
    no_temp_files(run)
    state = runs.load_checkpoint(run)
    done = state["epoch"] + 1   # finish the interrupted epoch and no more
    assert done < epochs

    assert invoke(["fit", "--out", run, "--resume", "--epochs", done, "--quiet"]).exit_code == 0
    reference = tmp_path / "reference"
    assert invoke(fit_args(data, reference, done)).exit_code == 0
    assert_same_run(run, reference)


# ---------------------------------------------------------------- atomic writes

def test_crash_while_saving_a_checkpoint_keeps_the_old_one(tmp_path, data, monkeypatch):
    run, reference = tmp_path / "run", tmp_path / "reference"
    real_write, calls, saved = runs.write_bytes, [0], {}

    def crashing_write(path, data):
        calls[0] += 1
        if calls[0] == 2:   # epoch 2's checkpoint: half a file, then the disk is full
            saved["bytes"] = (run / runs.CHECKPOINT).read_bytes()
            Path(path).write_bytes(bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(path, data)

    with monkeypatch.context() as patch:
        patch.setattr(runs, "write_bytes", crashing_write)
        line = one_error_line(invoke(fit_args(data, run, 3)), code=1)
    assert "No space left on device" in line and "--resume" in line, line
    assert (run / runs.CHECKPOINT).read_bytes() == saved["bytes"]
    assert load_run(run, device="cpu").epoch == 1
    no_temp_files(run)
    # metrics.jsonl got epoch 2 before the checkpoint failed; resuming drops it and redoes epoch 2
    assert invoke(["fit", "--out", run, "--resume", "--epochs", 3, "--quiet"]).exit_code == 0
    assert invoke(fit_args(data, reference, 3)).exit_code == 0
    assert_same_run(run, reference)


@contextlib.contextmanager
def small_disk(folder: Path, size: str = "1m"):
    """A real file system of ``size`` at ``folder`` (tmpfs: root only), unmounted afterwards."""
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_during_the_checkpoint_write_is_one_line_and_keeps_the_old_one(tmp_path, data):
    """A real full disk (torch's own writer made it a RuntimeError and a traceback): the checkpoint
    is serialized in memory, so the write fails as the OSError it is; the old checkpoint stays."""
    with small_disk(tmp_path / "disk") as disk:
        run = disk / "run"
        assert invoke(fit_args(data, run, 1)).exit_code == 0
        saved = (run / runs.CHECKPOINT).read_bytes()
        stats = os.statvfs(disk)
        # room for metrics.jsonl's rewrite, not for the checkpoint (some 30 kB)
        (disk / "filler").write_bytes(b"\0" * (stats.f_bavail * stats.f_frsize - 3 * 4096))
        line = one_error_line(invoke(["fit", "--out", run, "--resume", "--epochs", 2, "--quiet"]), code=1)
        assert "No space left on device" in line and "--resume" in line, line
        assert (run / runs.CHECKPOINT).read_bytes() == saved
        no_temp_files(run)
        (disk / "filler").unlink()
        assert invoke(["fit", "--out", run, "--resume", "--epochs", 2, "--quiet"]).exit_code == 0
        assert runs.load_checkpoint(run)["epoch"] == 2


def test_crash_in_atomic_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "config.json"
    runs.write_json(target, {"old": True})
    with pytest.raises(RuntimeError):
        with runs.atomic_path(target) as tmp:
            tmp.write_text('{"new": tr')
            raise RuntimeError("crash mid-write")
    assert json.loads(target.read_text()) == {"old": True}
    no_temp_files(tmp_path)


def test_stale_temp_files_from_a_killed_process_are_removed(tmp_path, data):
    run = tmp_path / "run"
    assert invoke(fit_args(data, run, 1)).exit_code == 0
    stale = run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half")
    assert invoke(["fit", "--out", run, "--resume", "--epochs", 2, "--quiet"]).exit_code == 0
    assert not stale.exists()
    no_temp_files(run)


def test_no_temp_files_after_a_normal_run(tmp_path, data):
    run = tmp_path / "run"
    assert invoke(fit_args(data, run, 2)).exit_code == 0
    no_temp_files(run)
    assert {p.name for p in run.iterdir()} >= {runs.CONFIG, runs.CHECKPOINT, runs.METRICS}


# ---------------------------------------------------------------- one writer per RUN_DIR

def test_second_writer_is_refused_in_process(tmp_path, data):
    run = tmp_path / "run"
    assert invoke(fit_args(data, run, 1)).exit_code == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with runs.run_lock(run):
        for args in (["fit", "--out", run, "--resume", "--epochs", 2, *TINY],
                     fit_args(data, run, 1, "--overwrite")):
            line = one_error_line(invoke(args), code=2)
            assert "another pyrovae process is writing" in line and "another --out" in line
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_second_writer_is_refused_across_processes(tmp_path, data):
    run = tmp_path / "run"
    assert invoke(fit_args(data, run, 1)).exit_code == 0
    with runs.run_lock(run):
        proc = subprocess.run([*PYROVAE, "fit", "--out", str(run), "--resume", "--epochs", "2", "--quiet"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error: another pyrovae process is writing")
    assert runs.load_checkpoint(run)["epoch"] == 1


# ---------------------------------------------------------------- signals after the last epoch

ANNOUNCED_PICTURES = """
import sys
import pyrovae.pictures.figures as figures
real = figures.sample_grid
def announced(*args, **kwargs):   # the real picture, announced: the test signals while it is drawn
    print("drawing samples.png", file=sys.stderr, flush=True)
    return real(*args, **kwargs)
figures.sample_grid = announced
from pyrovae.cli.main import main
sys.argv = ["pyrovae", *sys.argv[1:]]
main()
"""


def _one_interrupted_line(stderr: str) -> str:
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: interrupted: stopped by signal 2 while "), stderr
    return lines[0]


def test_a_signal_while_the_pictures_are_drawn_keeps_the_checkpoint_and_says_so(tmp_path, interrupt):
    run = tmp_path / "run"
    stopped = interrupt([sys.executable, "-c", ANNOUNCED_PICTURES, "fit", "--dataset", "mnist-sample", "--out", run,
                         "--epochs", 2, *TINY, "--batch-size", 500, "--threads", 1], rb"drawing samples.png")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.seconds < 10, stopped.seconds
    line = _one_interrupted_line(stopped.stderr)
    assert "drawing the end-of-training pictures; the checkpoint of epoch 2 is saved" in line
    assert "saved" in line and "before anything was saved" not in line
    assert line.endswith(f"Finish it with: pyrovae fit --out {run} --resume --epochs 2")
    assert runs.load_checkpoint(run)["epoch"] == 2 and not (run / "reconstructions.png").exists()
    no_temp_files(run)
    result = invoke(["fit", "--out", run, "--resume", "--epochs", 2, "--quiet"])   # the advice draws them
    assert result.exit_code == 0, result.output
    assert (run / "reconstructions.png").exists() and runs.load_checkpoint(run)["epoch"] == 2


def test_a_signal_during_the_test_time_fit_of_a_mean_field_run(tmp_path, interrupt):
    """A guide without an encoder fits q for the test points after training: a signal stops that
    fit within seconds, and the advice computes the test ELBO."""
    run = tmp_path / "run"
    stopped = interrupt([*PYROVAE, "fit", "--dataset", "mnist-sample", "--out", run, "--epochs", 1, *TINY,
                         "--batch-size", 500, "--guide", "meanfield", "--elbo", "meanfield", "--local-steps", 0,
                         "--threads", 1], rb"fitting q for 1000 test points")
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.seconds < 10, stopped.seconds
    line = _one_interrupted_line(stopped.stderr)
    assert "fitting q for the test points" in line and "the checkpoint of epoch 1 is saved" in line
    assert runs.load_checkpoint(run)["epoch"] == 1
    result = invoke(["fit", "--out", run, "--resume", "--epochs", 1, "--quiet"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["test_elbo_points"] == 1000 and -600 < out["test_elbo"] < 0
