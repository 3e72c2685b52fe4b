"""torch.distributed through torchrun: 2 CPU processes (gloo, localhost), bounded in time. A
distributed run equals a single process with the same seed and global batch; evaluations equal
single-process ones; resume; only rank 0 writes and prints; a signal to one process stops both."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from click.testing import CliRunner

from pyrovae.cli.main import cli

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="this PyTorch has no torch.distributed with gloo")

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
            "-m", "pyrovae.cli.main"]
PYROVAE = [sys.executable, "-m", "pyrovae.cli.main"]
TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--quiet", "--device", "cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def run(command: list, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, env=ENV, timeout=timeout)


def fit_here(*args) -> None:
    """A single-process fit in this process (torch on one thread, as OMP_NUM_THREADS=1 gives the
    workers): a reference or a run to evaluate, where the process itself is not what is tested."""
    result = CliRunner().invoke(cli, ["fit", *map(str, args)])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("ddp") / "d.npz"
    np.savez(path, train=rng.random((256, 12), dtype=np.float32), test=rng.random((40, 12), dtype=np.float32))
    return path


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_distributed_training_equals_one_process_and_resumes(tmp_path, data):
    single, split = tmp_path / "single", tmp_path / "split"
    fit_here("--dataset", data, "--out", single, "--epochs", 2, *TINY, "--noise", "per-row")
    first = run([*TORCHRUN, "fit", "--dataset", data, "--out", split, "--epochs", 1, *TINY])
    assert first.returncode == 0, first.stderr
    assert first.stdout.count("{") == 1 and json.loads(first.stdout)["processes"] == 2   # rank 0 prints
    assert sorted(p.name for p in split.iterdir() if not p.name.startswith(".")) == \
        ["checkpoint.pt", "config.json", "curves.png", "metrics.jsonl"]
    saved = json.loads((split / "config.json").read_text())["config"]
    assert saved["noise"] == "per-row" and saved["jit"] is False
    resumed = run([*TORCHRUN, "fit", "--out", split, "--resume", "--epochs", 2, "--quiet"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(single), weights(split)
    for key in a:   # the same global batches and draws; only the gradient's reduction order differs
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]


def test_distributed_conv_with_validation_equals_one_process(tmp_path):
    """--model conv (the guide's encoder convolutional too) and a validation split with best.pt
    under torchrun: the same weights as one process, best.pt of the same epoch."""
    rng = np.random.default_rng(1)
    images = tmp_path / "images.npz"
    np.savez(images, train=rng.random((160, 4, 6), dtype=np.float32), test=rng.random((20, 4, 6), dtype=np.float32))
    conv = ["--model", "conv", "--channels", "3", "--validation", "32", "--epochs", "2", *TINY]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    fit_here("--dataset", images, "--out", single, *conv, "--noise", "per-row")
    result = run([*TORCHRUN, "fit", "--dataset", images, "--out", ddp, *conv])
    assert result.returncode == 0, result.stderr
    for name in ("checkpoint.pt", "best.pt"):
        a, b = (torch.load(folder / name, weights_only=True) for folder in (single, ddp))
        assert a["epoch"] == b["epoch"]
        for key in a["model"]:
            torch.testing.assert_close(b["model"][key], a["model"][key], rtol=1e-5, atol=1e-6, msg=f"{name} {key}")


def test_distributed_evaluation_equals_one_process(tmp_path, data):
    run_dir = tmp_path / "run"
    fit_here("--dataset", data, "--out", run_dir, "--epochs", 1, *TINY)
    alone = run([*PYROVAE, "evaluate", run_dir, "--k", 60, "--batch-size", 7, "--per-point", tmp_path / "a.npz"])
    shared = run([*TORCHRUN, "evaluate", run_dir, "--k", 60, "--batch-size", 7, "--per-point", tmp_path / "b.npz"])
    assert alone.returncode == 0 and shared.returncode == 0, shared.stderr
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    for name in a.files:
        np.testing.assert_array_equal(b[name], a[name], err_msg=name)
    assert json.loads(shared.stdout)["log_likelihood"] == json.loads(alone.stdout)["log_likelihood"]
    assert shared.stderr.count("pyrovae: warning") <= 1


def test_per_datapoint_guides_are_refused_once(tmp_path, data):
    result = run([*TORCHRUN, "fit", "--dataset", data, "--out", tmp_path / "mf", "--guide", "meanfield", *TINY])
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("pyrovae:")]
    assert len(lines) == 1 and "distributed run does not shard" in lines[0], result.stderr
    assert not (tmp_path / "mf").exists()


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_signal_to_one_process_stops_both_with_a_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(c) for c in [*TORCHRUN, "fit", "--dataset", "mnist-sample", "--out", run_dir,
                                                "--epochs", 50, "--hidden", "32", "--latent-dim", "2",
                                                "--batch-size", "64", "--quiet", "--device", "cpu"]],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "metrics.jsonl").exists() and time.monotonic() < deadline:
            time.sleep(0.2)   # the first epoch is done
        workers = [grandchild for child in _children(proc.pid) for grandchild in [child, *_children(child)]]
        workers = [pid for pid in workers if b"pyrovae.cli.main" in Path(f"/proc/{pid}/cmdline").read_bytes()]
        if len(workers) != 2:
            pytest.skip("cannot see torchrun's workers in /proc")
        os.kill(workers[1], signal.SIGINT)   # one rank only
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    lines = [line for line in stderr.splitlines() if line.startswith("pyrovae:")]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: interrupted: stopped by signal 2"), stderr
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    assert state["epoch"] >= 1 and "--resume" in lines[0]


def test_a_dead_peer_is_one_line_on_the_surviving_rank(tmp_path, data):
    """Rank 1 killed (SIGKILL) mid-training: rank 0's next collective fails; it says so in one
    line (not gloo's traceback), and the run keeps its last checkpoint."""
    with socket.socket() as probe:   # a free port for the rendezvous
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    run_dir = tmp_path / "run"
    args = [*PYROVAE, "fit", "--dataset", data, "--out", run_dir, "--epochs", 500, *TINY, "--threads", 1]
    procs = [subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for rank in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not (run_dir / "checkpoint.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.1)   # the first epoch is saved
        assert (run_dir / "checkpoint.pt").exists(), procs[0].communicate(timeout=5)[1]
        procs[1].kill()
        _, stderr = procs[0].communicate(timeout=120)
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if "pyrovae:" in line or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error: another process of this distributed run "
                                                   "stopped"), stderr
    assert "--resume" in lines[0]
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["epoch"] >= 1
