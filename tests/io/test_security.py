"""A checkpoint or an array file is data, not code: pickled payloads are refused without running."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.config import FitConfig
from pyrovae.core.errors import UsageError
from pyrovae.workflows import fit, load_run

TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "32", "--quiet", "--device", "cpu"]


class Payload:
    """Unpickling this runs ``os.system('touch MARKER')``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class PathPayload:
    """Unpickling this calls ``pathlib.Path.touch`` directly (no shell)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def invoke(args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def one_error_line(result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("trained")
    rng = np.random.default_rng(0)
    np.savez(root / "data.npz", train=rng.random((100, 8), dtype=np.float32), test=rng.random((20, 8), dtype=np.float32))
    fit(FitConfig(dataset=str(root / "data.npz"), hidden=(16,), latent_dim=2, batch_size=32, epochs=1,
                  device="cpu"), root / "run", progress=False)
    return root / "run"


@pytest.fixture
def run(trained, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(trained, target)
    return target


def _zip_payload(path: Path, payload) -> None:
    """A real torch zip checkpoint whose pickle carries the payload next to the genuine state."""
    state = torch.load(path, weights_only=True)
    state["model"]["evil"] = payload
    torch.save(state, path)


def _bare_pickle(path: Path, payload) -> None:
    """A bare pickle (torch's legacy format) holding the payload."""
    path.write_bytes(pickle.dumps({"format_version": 1, "model": payload}))


@pytest.mark.parametrize("writer", [_zip_payload, _bare_pickle], ids=["torch-zip", "bare-pickle"])
@pytest.mark.parametrize("payload_class", [Payload, PathPayload], ids=["os.system", "Path.touch"])
def test_pickled_checkpoint_is_refused_and_not_run(run, tmp_path, writer, payload_class):
    marker = tmp_path / "PWNED"
    writer(run / runs.CHECKPOINT, payload_class(marker))
    assert not marker.exists()
    before = digest(run)

    with pytest.raises(UsageError, match="not a pyrovae checkpoint|objects other than tensors"):
        runs.load_checkpoint(run)
    with pytest.raises(UsageError):
        load_run(run, device="cpu")
    line = one_error_line(invoke(["sample", run, "--out", tmp_path / "x.png", "--device", "cpu"]))
    assert "checkpoint" in line
    line = one_error_line(invoke(["fit", "--out", run, "--resume", "--epochs", "2", *TINY]))
    assert "checkpoint" in line and ("data, not code" in line or "not a pyrovae checkpoint" in line), line

    assert not marker.exists(), "the payload ran"
    assert digest(run) == before
    assert not (tmp_path / "x.png").exists()


def test_zip_payload_message_says_data_not_code(run, tmp_path):
    marker = tmp_path / "PWNED"
    _zip_payload(run / runs.CHECKPOINT, Payload(marker))
    line = one_error_line(invoke(["sample", run, "--out", tmp_path / "x.png", "--device", "cpu"]))
    assert "objects other than tensors" in line and "data, not code" in line and "system" in line, line
    assert "weights_only` set to `False`" not in line   # no advice to load it unsafely
    assert not marker.exists()


@pytest.mark.parametrize("container", ["npy", "npz"])
def test_pickled_array_file_is_refused_and_not_run(tmp_path, container):
    marker = tmp_path / "PWNED"
    objects = np.empty((4, 2), dtype=object)
    objects[:] = 0.5
    objects[1, 1] = Payload(marker)
    path = tmp_path / f"data.{container}"
    if container == "npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, train=objects)
    assert not marker.exists()
    before = digest(tmp_path)
    line = one_error_line(invoke(["fit", "--dataset", path, "--out", tmp_path / "out", *TINY]))
    assert "pickled python objects" in line.lower() and "data, not code" in line, line
    assert not marker.exists(), "the payload ran"
    assert digest(tmp_path) == before
    assert not (tmp_path / "out").exists()


def test_bare_pickle_as_array_file_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "data.npy"
    path.write_bytes(pickle.dumps(Payload(marker)))
    line = one_error_line(invoke(["fit", "--dataset", path, "--out", tmp_path / "out", *TINY]))
    assert "not a numpy array file" in line and "does not unpickle" in line, line
    assert not marker.exists(), "the payload ran"
