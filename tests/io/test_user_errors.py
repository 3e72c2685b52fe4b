"""What a new user hits (issue 10): moved data, impossible K, options silently dropped on resume,
interrupted evaluations, the Python API's wording, and advice that fits the situation. Each case
asserts the exit code, one line on stderr without a traceback, and files left as they were."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pyrovae.evaluation.importance as importance
import pyrovae.inference.compare as compare_module
from conftest import PYROVAE, TINY, invoke, one_line
from pyrovae import runs
from pyrovae.config import FitConfig
from pyrovae.core.errors import UsageError
from pyrovae.workflows import fit



def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ---------------------------------------------------------------------------- 1. paths

def test_relative_paths_are_recorded_absolute_and_a_moved_file_can_be_pointed_at(tmp_path, data, monkeypatch):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(data, tmp_path / "a" / "small.npz")
    monkeypatch.chdir(tmp_path / "a")
    assert invoke("fit", "--dataset", "small.npz", "--data-dir", ".", "--out", "runs/rel", "--epochs", 1,
                  *TINY).exit_code == 0
    saved = json.loads((tmp_path / "a" / "runs" / "rel" / runs.CONFIG).read_text())
    assert saved["config"]["dataset"] == str(tmp_path / "a" / "small.npz")
    assert saved["config"]["data_dir"] == str(tmp_path / "a")
    assert saved["typed_paths"] == {"dataset": "small.npz", "data_dir": "."}

    monkeypatch.chdir(tmp_path / "b")   # another folder: the run still finds its data
    run_dir = tmp_path / "a" / "runs" / "rel"
    assert invoke("evaluate", run_dir, "--k", 30, "--limit", 5).exit_code == 0

    moved = tmp_path / "b" / "moved.npz"
    (tmp_path / "a" / "small.npz").rename(moved)
    line = one_line(invoke("evaluate", run_dir, "--k", 30, "--limit", 5), 2)
    assert "'small.npz'" in line and "does not exist" in line and "--dataset" in line
    result = invoke("evaluate", run_dir, "--k", 30, "--limit", 5, "--dataset", moved)
    assert result.exit_code == 0, result.output
    other = tmp_path / "b" / "other.npz"
    np.savez(other, train=np.random.default_rng(1).random((99, 8), dtype=np.float32))
    line = one_line(invoke("evaluate", run_dir, "--k", 30, "--dataset", other), 2)
    assert "99 training rows" in line and "150" in line


# ---------------------------------------------------------------------------- 2. resources

def test_an_impossible_k_is_refused_before_any_work(run):
    started = time.perf_counter()
    line = one_line(invoke("evaluate", run, "--k", 10 ** 12, "--limit", 50), 2)
    assert time.perf_counter() - started < 30
    assert "--k 1000000000000" in line and "GB" in line and "--k" in line.split(";")[-1]
    line = one_line(invoke("evaluate", run, "--k", 10 ** 8, "--limit", 40, "--batch-size", 40), 2)
    assert "--batch-size" in line.split(";")[-1]
    assert not (run / ".partial").exists()


def test_k_hat_with_too_few_draws_is_null_with_a_reason(run):
    result = invoke("evaluate", run, "--k", 1, "--limit", 3)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["khat_max"] is None and out["reliable"] is None and "at least 25 draws" in out["khat_reason"]


def test_a_remaining_out_of_memory_is_one_line_with_a_fix(run, monkeypatch):
    def oom(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:121] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 160000000000 bytes.\nmore")
    monkeypatch.setattr(importance, "importance_batch", oom)
    line = one_line(invoke("evaluate", run, "--k", 30, "--limit", 5), 1)
    assert "out of memory" in line and "--batch-size" in line


# ---------------------------------------------------------------------------- 3. resume

def test_resume_refuses_options_that_differ_and_names_them(run):
    before = files_of(run)
    line = one_line(invoke("fit", "--out", run, "--resume", "--epochs", 4, "--lr", 0.01, "--hidden", 200), 2)
    assert "--lr 0.01 (the run has 0.001)" in line and "--hidden 200 (the run has 16)" in line
    assert "--epochs, --minutes, --patience, --device, --data-dir" in line
    assert files_of(run) == before
    # what may change on resume does
    result = invoke("fit", "--out", run, "--resume", "--epochs", 3, "--minutes", 5, "--device", "cpu", "--quiet",
                    "--hidden", 16)   # an option equal to the run's own is fine
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs"] == 3
    help_text = invoke("fit", "--help").output
    assert "--epochs, --minutes, --patience, --device, --data-dir, --tensorboard, --curves-every may differ" in \
        " ".join(help_text.split())


# ---------------------------------------------------------------------------- 4. interrupted evaluations

def interrupt_on_call(monkeypatch, module, name, at_call):
    real, calls = getattr(module, name), [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signal.SIGINT)   # a real signal: the batch under way may finish or be dropped
        return real(*args, **kwargs)
    monkeypatch.setattr(module, name, wrapped)


def per_point(path: Path) -> dict:
    return dict(np.load(path))


def test_interrupted_evaluate_resumes_to_the_uninterrupted_numbers(run, tmp_path, monkeypatch):
    args = ["evaluate", run, "--k", 60, "--batch-size", 7, "--split", "train"]
    assert invoke(*args, "--per-point", tmp_path / "whole.npz").exit_code == 0
    with monkeypatch.context() as patch:
        interrupt_on_call(patch, importance, "importance_batch", 3)
        line = one_line(invoke(*args, "--per-point", tmp_path / "split.npz"), 130, kind="interrupted")
    # the third batch, under way at the signal, is dropped at its first chunk of particles
    assert "stopped after 14 of 150 points" in line and "error" not in line
    assert line.endswith("--resume") and "continue with: pyrovae evaluate" in line
    assert not (tmp_path / "split.npz").exists() and len(list((run / ".partial").iterdir())) == 1
    result = invoke(*args, "--per-point", tmp_path / "split.npz", "--resume")
    assert result.exit_code == 0, result.output
    whole, split = per_point(tmp_path / "whole.npz"), per_point(tmp_path / "split.npz")
    assert whole.keys() == split.keys()
    for name in whole:
        np.testing.assert_array_equal(split[name], whole[name], err_msg=name)
    assert not list((run / ".partial").iterdir())   # a finished evaluation leaves no partial state
    line = one_line(invoke(*args, "--k", 61, "--resume"), 2)
    assert "no interrupted evaluation with these options" in line


def test_interrupted_compare_resumes_to_the_uninterrupted_numbers(run, monkeypatch):
    args = ["compare", run, "--limit", 12, "--k", 40, "--steps", 30, "--refine-steps", 3, "--batch-size", 5]
    whole = invoke(*args)
    assert whole.exit_code == 0, whole.output
    with monkeypatch.context() as patch:   # the second batch's first fit: dropped at its next step
        interrupt_on_call(patch, compare_module, "fit_local", 4)
        line = one_line(invoke(*args), 130, kind="interrupted")
    assert "stopped after 5 of 12 points" in line and line.endswith("--resume")
    resumed = invoke(*args, "--resume")
    assert resumed.exit_code == 0, resumed.output
    a, b = json.loads(whole.stdout)["test"], json.loads(resumed.stdout)["test"]
    for key in ("log_likelihood", "elbo_q", "elbo_optimized", "amortization_gap", "approximation_gap"):
        assert a[key] == b[key], key


def test_sigint_to_a_real_evaluate_process_keeps_the_finished_points(run):
    """A real Ctrl-C from outside, once the evaluation shows progress: exit 130, one 'interrupted'
    line, the finished points saved for --resume."""
    args = [*PYROVAE, "evaluate", str(run), "--k", "3000", "--batch-size", "2", "--split", "train", "--no-compile"]
    # unbuffered: a piped stderr is line-buffered, and the bar's updates end in \r, not \n
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = bytearray()

    def pump() -> None:
        for byte in iter(lambda: proc.stderr.read(1), b""):
            seen.extend(byte)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not re.search(rb"\| [1-9][0-9]*/150 ", bytes(seen)) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)   # wait until the progress bar counts finished points
    proc.send_signal(signal.SIGINT)
    # the pump thread alone reads stderr (communicate() would race it for the last lines)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stdout = proc.stdout.read()
    stderr = seen.decode(errors="replace")
    if proc.returncode == 0:
        pytest.skip("the evaluation finished before the signal arrived")
    assert proc.returncode == 130, stderr
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: interrupted: stopped after"), stderr
    assert stdout == b""
    saved = list((run / ".partial").glob("evaluate-*.npz"))
    assert len(saved) == 1 and np.load(saved[0])["__done__"].any()


# ---------------------------------------------------------------------------- 5. the Python API's words

def test_the_api_speaks_python(tmp_path, data):
    config = FitConfig(dataset=str(data), hidden=(16,), latent_dim=2, epochs=1, device="cpu")
    fit(config, tmp_path / "demo", progress=False)
    with pytest.raises(UsageError) as caught:
        fit(config, tmp_path / "demo", progress=False)   # the README's snippet, run twice
    message = str(caught.value)
    assert "resume=True" in message and "overwrite=True" in message and "run_dir" in message
    assert "--" not in message
    with pytest.raises(UsageError, match=r"^epochs must be at least 1"):
        fit(FitConfig(dataset=str(data), epochs=0), tmp_path / "other", progress=False)
    fit(config, tmp_path / "demo", overwrite=True, progress=False)


# ---------------------------------------------------------------------------- 6. advice that fits

def test_heavy_tail_advice_fits_the_proposal_in_use(run):
    by_guide = json.loads(invoke("evaluate", run, "--k", 30, "--limit", 20).stdout)
    by_fit = json.loads(invoke("evaluate", run, "--k", 30, "--limit", 20, "--proposal", "fit").stdout)
    compared = json.loads(invoke("compare", run, "--k", 30, "--limit", 20, "--steps", 20).stdout)["test"]
    assert by_guide["warning"] and "--proposal fit" in by_guide["warning"] and "--method ais" in by_guide["warning"]
    assert by_fit["warning"] and "--proposal fit" not in by_fit["warning"] and "--method ais" in by_fit["warning"]
    if compared["warning"]:
        assert "--proposal" not in compared["warning"] and "--log-px ais" in compared["warning"]


# ---------------------------------------------------------------------------- 7. every long command stops

STOPS = [   # (command after RUN_DIR, what stderr shows once the work is under way, signal)
    (["evaluate", "--k", "1000000", "--split", "test", "--limit", "20", "--no-compile"], rb"log p\(x\)",
     signal.SIGINT),   # the only batch: once swallowed (exit 0 after it finished)
    (["evaluate", "--method", "ais", "--steps", "100000", "--limit", "20", "--is-k", "0", "--no-compile"],
     rb"AIS", signal.SIGTERM),
    # the AIS case above stops in the tuning round (its bar, "AIS tuning", shows first); here the chains
    # themselves, so no tuning round (100000 temperatures of it would take minutes before "BDMC" shows)
    (["bdmc", "--n", "10", "--steps", "100000", "--is-k", "0", "--adapt-step-size"], rb"BDMC", signal.SIGINT),
    (["compare", "--limit", "20", "--k", "1000000", "--steps", "50"], rb"compare", signal.SIGTERM),
]


@pytest.mark.parametrize("command, when, sig", STOPS, ids=["is-only-batch", "ais", "bdmc", "compare"])
def test_every_evaluation_stops_soon_after_a_signal_and_keeps_what_finished(run, interrupt, command, when, sig):
    """A real process, signalled while it works: exit 130 within seconds (not at the end of the
    batch), one `interrupted` line with the command that continues, nothing recorded, the
    finished points (none here) saved for --resume."""
    before = (run / runs.EVALUATIONS).read_bytes() if (run / runs.EVALUATIONS).exists() else None
    stopped = interrupt([*PYROVAE, command[0], run, *command[1:], "--threads", "1"], when, sig)
    assert stopped.returncode == 130, stopped.stderr
    assert stopped.seconds < 10, stopped.seconds   # about a chunk of particles, an AIS transition, a fit step
    lines = [line for line in stopped.stderr.replace("\r", "\n").splitlines()
             if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: interrupted: stopped after 0 of "), stopped.stderr
    assert lines[0].endswith("--resume") and stopped.stdout == ""
    assert ((run / runs.EVALUATIONS).read_bytes() if (run / runs.EVALUATIONS).exists() else None) == before
    (saved,) = (run / runs.PARTIAL).glob(f"{command[0]}-*.npz")
    assert not np.load(saved)["__done__"].any()


@pytest.mark.parametrize("command", [["evaluate", "--k", 30, "--limit", 20, "--no-compile"],
                                     ["compare", "--k", 30, "--limit", 10, "--steps", 5]], ids=["evaluate", "compare"])
def test_a_signal_while_the_result_is_written_keeps_it_and_says_so(run, monkeypatch, command):
    """Ctrl-C after the estimate finished, while its result is being written (the per-point
    file, the figure, the record): the record is written, then exit 130 saying so (it once
    dropped the finished work and said "stopped before anything was saved")."""
    real = runs.record_evaluation

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)   # delivered as the result is being recorded
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "record_evaluation", signalled)
    before = len(runs.read_jsonl(run / runs.EVALUATIONS)) if (run / runs.EVALUATIONS).exists() else 0
    result = invoke(command[0], run, *command[1:])
    assert result.exit_code == 130, (result.output, result.exception)
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("pyrovae: interrupted: ")]
    assert "after the estimate had finished" in line and "recorded" in line and "Traceback" not in result.stderr
    records = runs.read_jsonl(run / runs.EVALUATIONS)
    assert len(records) == before + 1 and records[-1]["command"] == command[0]
