"""Run folders that never mislead (issue 20): a checkpoint killed mid-write is recoverable, results
are tied to the checkpoint they came from, a folder of the user's files is never written into,
two fits or two evaluates at once lose nothing, and a damaged file is one line, never a traceback.
Each case asserts the exit code, one `pyrovae:` line on stderr without a traceback, and the files."""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import pyrovae.evaluation.importance as importance
from conftest import TINY, invoke, one_line, only_line
from pyrovae import runs
from pyrovae.pictures import plots
from pyrovae.workflows import load_run
from pyrovae.workflows import run_callbacks as callbacks



def files_of(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones too) by relative path: what a refusal must leave alone."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def evaluate(run_dir: Path, *extra):
    return invoke("evaluate", run_dir, "--k", 30, "--split", "train", "--batch-size", 50, *extra)


# ---------------------------------------------------------------------------- a checkpoint killed mid-write

KILLED_IN_FIRST_CHECKPOINT = """
import os, signal, sys
from pyrovae import runs
real = runs.write_bytes
def killed(path, data):   # half the first checkpoint on disk, then SIGKILL: no handler runs
    real(path, bytes(data)[: len(data) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
runs.write_bytes = killed
from pyrovae.cli.main import main
sys.argv = ["pyrovae", *sys.argv[1:]]
main()
"""


def test_a_fit_killed_in_its_first_checkpoint_write_is_recovered_by_the_advice(tmp_path, data):
    """SIGKILL halfway through the first checkpoint: evaluate's advice (`fit --resume`) trains
    the run from the start with its own options, to the numbers of an uninterrupted run; plain
    `fit --out` works as well."""
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_FIRST_CHECKPOINT, "fit", "--dataset", str(data),
                           "--out", str(out), "--epochs", "2", "--seed", "3", *TINY],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / runs.CONFIG).exists() and not (out / runs.CHECKPOINT).exists()
    assert any(p.name.endswith(".tmp") for p in out.iterdir())   # the half-written temporary file

    line = one_line(evaluate(out), 2)
    assert "no checkpoint" in line and f"pyrovae fit --out {out} --resume" in line
    result = invoke("fit", "--out", out, "--resume", "--quiet")   # the advice, as given
    assert result.exit_code == 0, result.output
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())
    reference = tmp_path / "reference"
    assert invoke("fit", "--dataset", data, "--out", reference, "--epochs", 2, "--seed", 3, *TINY).exit_code == 0
    a, b = runs.load_checkpoint(out), runs.load_checkpoint(reference)
    assert a["epoch"] == b["epoch"] == 2
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key

    (out / runs.CHECKPOINT).unlink()   # the other advice: a plain fit into the folder
    result = invoke("fit", "--dataset", data, "--out", out, "--epochs", 1, *TINY)
    assert result.exit_code == 0, result.output
    assert runs.load_checkpoint(out)["epoch"] == 1


# ---------------------------------------------------------------------------- results tied to their checkpoint

def interrupt_at_batch(monkeypatch, at_call: int) -> None:
    real, calls = importance.importance_batch, [0]

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at_call:
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)
    monkeypatch.setattr(importance, "importance_batch", wrapped)


def test_overwrite_replaces_every_result_of_the_old_model_and_keeps_the_users_files(run, data, monkeypatch):
    assert evaluate(run).exit_code == 0
    with monkeypatch.context() as patch:   # an interrupted evaluation leaves its partial points
        interrupt_at_batch(patch, 2)
        one_line(evaluate(run), 130, kind="interrupted")
    (saved,) = (run / runs.PARTIAL).iterdir()
    old_points = saved.read_bytes()
    (run / "notes.txt").write_text("mine\n")
    result = invoke("fit", "--dataset", data, "--out", run, "--epochs", 2, "--seed", 1, "--overwrite", *TINY)
    assert result.exit_code == 0, result.output
    assert not (run / runs.EVALUATIONS).exists() and not (run / runs.PARTIAL).exists()
    assert (run / "notes.txt").read_text() == "mine\n"
    line = one_line(evaluate(run, "--resume"), 2)
    assert "no interrupted evaluation" in line
    shown = json.loads(invoke("show", run).stdout)["runs"][0]
    assert shown["evaluations"] == [] and shown["other_evaluations"] == []
    # the old model's points put back (same options, same epoch): refused, not resumed into the new model's
    saved.parent.mkdir()
    saved.write_bytes(old_points)
    line = one_line(evaluate(run, "--resume"), 2)
    assert "another checkpoint" in line


def test_show_and_resume_never_mix_results_of_another_checkpoint(run, monkeypatch):
    """After `fit --resume` trains further, the old checkpoint's log p(x) is not shown as this
    run's, and its partial points are not resumed (they would be off by nats, silently)."""
    first = json.loads(evaluate(run).stdout)
    with monkeypatch.context() as patch:
        interrupt_at_batch(patch, 2)
        one_line(evaluate(run), 130, kind="interrupted")
    assert invoke("fit", "--out", run, "--resume", "--epochs", 3, "--quiet").exit_code == 0

    line = one_line(evaluate(run, "--resume"), 2)
    assert "another checkpoint" in line and "without --resume" in line
    shown = invoke("show", run)
    described = json.loads(shown.stdout)["runs"][0]
    assert described["evaluations"] == []
    assert [e["summary"]["log_likelihood"] for e in described["other_evaluations"]] == [first["log_likelihood"]]
    assert "log p(x), IS" not in shown.stderr and "of other checkpoints (not shown)  1" in shown.stderr

    second = json.loads(evaluate(run).stdout)   # the new checkpoint's own
    described = json.loads(invoke("show", run).stdout)["runs"][0]
    assert [e["summary"]["log_likelihood"] for e in described["evaluations"]] == [second["log_likelihood"]]
    assert described["evaluations"][0]["checkpoint"] == runs.checkpoint_sha256(run) == load_run(run).checkpoint


# ---------------------------------------------------------------------------- folders that are not runs

def test_what_overwrite_deletes_is_what_pyrovae_writes():
    assert {callbacks.CURVES_PNG, plots.SAMPLES_PNG, plots.RECONSTRUCTIONS_PNG} <= set(runs.RUN_FILES)
    assert callbacks.TENSORBOARD_DIR in runs.RUN_FOLDERS

def test_fit_never_writes_into_a_folder_of_the_users_files(tmp_path, data):
    """Even files named like pyrovae's (metrics.jsonl, samples.png, checkpoint.pt) are the user's
    in a folder without a pyrovae config.json: refused, with or without --overwrite (which would
    have deleted them), nothing written."""
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "checkpoint.pt").write_bytes(b"my own model")
    (folder / "metrics.jsonl").write_text('{"mine": 1}\n')
    (folder / "samples.png").write_bytes(b"my picture")
    (folder / "config.json").write_text('{"learning_rate": 3}\n')   # not a pyrovae config
    before = files_of(folder)
    for extra in ([], ["--overwrite"]):
        line = one_line(invoke("fit", "--dataset", data, "--out", folder, "--epochs", 1, *TINY, *extra), 2)
        assert "holds files that are not a pyrovae run" in line and "new or empty folder" in line
        assert files_of(folder) == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("fit", "--dataset", data, "--out", empty, "--epochs", 1, *TINY).exit_code == 0


PAUSED_AFTER_ITS_CHECK = """
import sys, time
from pathlib import Path
import pyrovae.workflows.fitting as fitting
real, signals = fitting.prepare_data, Path(sys.argv[1])
def paused(*args, **kwargs):   # the folder is checked; wait here while the other fit runs
    (signals / "checked").touch()
    while not (signals / "go").exists():
        time.sleep(0.05)
    return real(*args, **kwargs)
fitting.prepare_data = paused
from pyrovae.cli.main import main
sys.argv = ["pyrovae", *sys.argv[2:]]
main()
"""


def test_a_fit_that_checked_a_new_folder_before_another_fit_filled_it_is_refused(tmp_path, data):
    """Two fits on one new --out: the second checked the folder (empty) before the first wrote
    its run; the first finishes; the second is refused when it takes the lock, not trained over
    the first's run (both exited 0 before: the check came before the lock)."""
    out, signals = tmp_path / "run", tmp_path / "signals"
    signals.mkdir()
    args = ["fit", "--dataset", str(data), "--out", str(out), *TINY]
    second = subprocess.Popen([sys.executable, "-c", PAUSED_AFTER_ITS_CHECK, str(signals), *args, "--epochs", "1"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (signals / "checked").exists() and second.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (signals / "checked").exists(), second.communicate()[1]
        first = invoke(*args, "--epochs", "2")   # in this process: the second is another process all the same
        assert first.exit_code == 0, first.output
        finished = files_of(out)
        (signals / "go").touch()
        _, stderr = second.communicate(timeout=300)
    finally:
        second.kill()
    assert second.returncode == 2, stderr
    assert "already holds a run" in only_line(stderr)
    assert files_of(out) == finished and runs.load_checkpoint(out)["epoch"] == 2


def _append(path: str, writer: int, count: int) -> None:
    for i in range(count):
        runs.append_jsonl(Path(path), {"writer": writer, "i": i, "pad": "x" * 200})


def _read(path: str, seconds: float, queue) -> None:
    """Parse the file over and over while others append: a half line would raise."""
    deadline, reads = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        runs.read_jsonl(Path(path))
        reads += 1
    queue.put(reads)


def test_appends_from_several_processes_at_once_keep_every_line(tmp_path):
    path = tmp_path / runs.EVALUATIONS
    runs.write_jsonl(path, [{"old": i, "pad": "y" * 200} for i in range(3000)])
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    reader = context.Process(target=_read, args=(str(path), 3.0, queue))
    writers = [context.Process(target=_append, args=(str(path), w, 15)) for w in range(4)]
    reader.start()
    for process in writers:
        process.start()
    for process in [*writers, reader]:
        process.join(timeout=120)
        assert process.exitcode == 0
    assert queue.get(timeout=10) > 0
    records = runs.read_jsonl(path)
    assert len(records) == 3000 + 4 * 15
    assert {(r["writer"], r["i"]) for r in records if "writer" in r} == {(w, i) for w in range(4) for i in range(15)}


# ---------------------------------------------------------------------------- damaged files: one line

def _cut(path: Path) -> None:
    text = path.read_bytes()
    path.write_bytes(text[: len(text) - len(text.splitlines()[-1]) // 2 - 1])   # the last line, half of it


def _binary(path: Path) -> None:
    path.write_bytes(os.urandom(300) + b"\xff\xfe")


@pytest.mark.parametrize("damage", [_cut, _binary], ids=["cut", "binary"])
def test_a_damaged_metrics_file_is_one_line(run, damage):
    damage(run / runs.METRICS)
    before = files_of(run)
    for args in (["show", run], ["fit", "--out", run, "--resume", "--epochs", 3, "--quiet"]):
        line = one_line(invoke(*args), 2)
        assert "metrics.jsonl" in line and ("line" in line or "not text" in line) and "restore" in line
        assert files_of(run) == before


def test_a_cut_evaluations_file_is_refused_before_the_work(run, monkeypatch):
    assert evaluate(run).exit_code == 0 and evaluate(run).exit_code == 0
    _cut(run / runs.EVALUATIONS)
    before = files_of(run)

    def no_work(*args, **kwargs):
        raise AssertionError("the work started")
    monkeypatch.setattr(importance.ImportanceSampling, "estimate", no_work)
    for command in (["evaluate", run], ["compare", run, "--limit", 5], ["bdmc", run, "--n", 2]):
        line = one_line(invoke(*command), 2)
        assert "evaluations.jsonl' line 2 is cut or not JSON" in line, line
    line = one_line(invoke("show", run), 2)
    assert "evaluations.jsonl' line 2" in line
    assert files_of(run) == before


def _garble_partial(path: Path) -> None:
    with zipfile.ZipFile(path) as archive:   # a real zip whose array is not the points saved
        names = archive.namelist()
    arrays = dict(np.load(path))
    arrays["__done__"] = np.ones(3, dtype=bool)
    np.savez(path, **arrays)
    assert names


@pytest.mark.parametrize("damage", [_cut, _garble_partial, _binary], ids=["cut", "garbled", "binary"])
def test_a_damaged_partial_file_is_one_line(run, monkeypatch, damage):
    with monkeypatch.context() as patch:
        interrupt_at_batch(patch, 2)
        one_line(evaluate(run), 130, kind="interrupted")
    (saved,) = (run / runs.PARTIAL).iterdir()
    damage(saved)
    line = one_line(evaluate(run, "--resume"), 2)
    assert "is damaged" in line and "without --resume" in line
    assert evaluate(run).exit_code == 0   # without --resume, computed afresh


@pytest.mark.parametrize("key, value, needle", [("latent_dim", "4", "latent_dim is '4', not an int"),
                                                ("hidden", ["16"], "hidden is ['16'], not a list of ints"),
                                                ("latent_dim", 0, "latent_dim must be at least 1")])
def test_a_config_with_wrong_types_is_one_line(run, key, value, needle):
    saved = json.loads((run / runs.CONFIG).read_text())
    saved["config"][key] = value
    (run / runs.CONFIG).write_text(json.dumps(saved))
    before = files_of(run)
    for args in (["evaluate", run, "--k", 5], ["sample", run, "--out", run.parent / "x.png"],
                 ["fit", "--out", run, "--resume", "--epochs", 3, "--quiet"], ["compare", run, "--limit", 3]):
        line = one_line(invoke(*args), 2)
        assert "config.json" in line and needle in line and "restore" in line, line
        assert files_of(run) == before
    assert not (run.parent / "x.png").exists()


def _resave(run: Path, change, checksum: bool) -> None:
    """The checkpoint changed and saved again: with its checksum recomputed (as if pyrovae had
    saved it so), or without one (as pyrovae before checksums did)."""
    state = torch.load(run / runs.CHECKPOINT, weights_only=True)
    change(state)
    del state["checksum"]
    if checksum:
        state["checksum"] = runs.state_checksum(state)
    torch.save(state, run / runs.CHECKPOINT)


def _flip_tensor_bytes(run: Path) -> None:
    """Bytes flipped inside the largest tensor's data, the zip's structure intact."""
    path = run / runs.CHECKPOINT
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    header = 30 + int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little") + \
        int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    middle = info.header_offset + header + info.file_size // 2
    for i in range(middle, middle + 8):
        raw[i] ^= 0xFF
    path.write_bytes(bytes(raw))


def _nan_weights(state: dict) -> None:
    name = next(iter(state["model"]))
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))


CHECKPOINTS = {
    "flipped-bytes": (_flip_tensor_bytes, "is damaged: its content does not match the checksum"),
    "no-optimizer": (lambda run: _resave(run, lambda s: s.pop("optimizer"), False), "lacks its 'optimizer'"),
    "no-optimizer-checksummed": (lambda run: _resave(run, lambda s: s.pop("optimizer"), True), "lacks its 'optimizer'"),
    "edited": (lambda run: _resave(run, _nan_weights, False), "not finite"),
    "nan-weights": (lambda run: _resave(run, _nan_weights, True), "not finite (NaN or inf in"),
}


@pytest.mark.parametrize("case", sorted(CHECKPOINTS))
def test_a_damaged_checkpoint_is_one_line(run, case):
    damage, needle = CHECKPOINTS[case]
    damage(run)
    before = files_of(run)
    for args in (["evaluate", run, "--k", 5], ["fit", "--out", run, "--resume", "--epochs", 3, "--quiet"],
                 ["sample", run, "--out", run.parent / "x.png"]):
        line = one_line(invoke(*args), 2)
        assert "checkpoint.pt" in line and needle in line and ("restore" in line or "retrain" in line), line
        assert files_of(run) == before


def test_a_checkpoint_without_a_checksum_still_loads(run):
    """Checkpoints pyrovae wrote before it stored checksums load as they did."""
    _resave(run, lambda state: None, False)
    assert evaluate(run).exit_code == 0


@contextlib.contextmanager
def read_only(folder: Path):
    """``folder`` made unwritable: chmod for a user; for root, whom permissions do not stop, the
    immutable attribute (chattr +i), where the file system has it."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("root, and no chattr +i here: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_a_read_only_run_is_refused_before_the_work_unless_nothing_is_recorded(run, monkeypatch):
    real, calls = importance.ImportanceSampling.estimate, []

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(importance.ImportanceSampling, "estimate", counted)
    before = files_of(run)
    with read_only(run):
        line = one_line(evaluate(run), 2)
        assert "evaluations.jsonl" in line and "--no-record" in line and not calls
        result = evaluate(run, "--no-record")
        assert result.exit_code == 0, result.output
        line = one_line(invoke("fit", "--out", run, "--resume", "--epochs", 3, "--quiet"), 2)
        assert "cannot write the checkpoint" in line and "permissions" in line
    assert calls and files_of(run) == before


def test_per_point_names_any_folder_takes_work_and_longer_ones_fail_first(run, tmp_path):
    long = tmp_path / ("p" * 245 + ".csv")   # 249 characters: its temporary file's name is cut to fit
    result = evaluate(run, "--per-point", long, "--no-record")
    assert result.exit_code == 0, result.output
    assert len(long.read_text().splitlines()) == 151
    too_long = tmp_path / ("p" * 252 + ".csv")
    started = time.perf_counter()
    line = one_line(evaluate(run, "--per-point", too_long, "--k", 100000), 2)
    assert "256 bytes long" in line and "shorter name" in line and time.perf_counter() - started < 30


def test_sample_refuses_more_images_than_a_picture_holds_before_the_work(tmp_path):
    out = tmp_path / "run"
    assert invoke("fit", "--dataset", "mnist-sample", "--out", out, "--epochs", 1, *TINY).exit_code == 0
    started = time.perf_counter()
    line = one_line(invoke("sample", out, "--n", 100_000_000, "--out", tmp_path / "s.png"), 2)
    assert time.perf_counter() - started < 30
    assert "--n 100000000" in line and "--batch-size" not in line
    most = int(line.split("pass --n ")[1].split()[0])
    assert 1000 < most < 10_000
    assert invoke("sample", out, "--n", most, "--out", tmp_path / "s.png").exit_code == 0
    assert one_line(invoke("sample", out, "--n", most + 1, "--out", tmp_path / "t.png"), 2)
    assert not (tmp_path / "t.png").exists()
