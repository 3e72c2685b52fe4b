"""Shared set-up: tiny tensors on one thread, a clean Pyro state for every test, a small data
file and a run trained on it (``data``, ``run``: a module may define its own), and a real
process to send a signal to."""
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner

from pyrovae.cli.main import cli

# The tests use tiny tensors: more threads only contend (2 cores here, often shared).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def clean_pyro():
    """pyro.module names are global and Pyro draws from torch's global generator."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def data(tmp_path) -> Path:
    """150 training and 40 test rows of 8 features in [0, 1]."""
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    np.savez(path, train=rng.random((150, 8), dtype=np.float32), test=rng.random((40, 8), dtype=np.float32))
    return path


@pytest.fixture
def run(tmp_path, data) -> Path:
    """Two epochs of a tiny VAE on ``data``."""
    out = tmp_path / "run"
    args = ["fit", "--dataset", data, "--out", out, "--epochs", 2, "--hidden", 16, "--latent-dim", 2,
            "--batch-size", 50, "--quiet", "--device", "cpu"]
    assert CliRunner().invoke(cli, [str(a) for a in args]).exit_code == 0
    return out


class Interrupted:
    """What a command did after a signal: its exit code, output, and the seconds from the signal
    to its exit."""

    def __init__(self, returncode: int, stdout: str, stderr: str, seconds: float):
        self.returncode, self.stdout, self.stderr, self.seconds = returncode, stdout, stderr, seconds


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)   # a shell's background job inherits SIGINT ignored


@pytest.fixture
def interrupt():
    """``interrupt(args, when, sig)``: run ``args`` in a real process, send it ``sig`` once its
    stderr matches the regex ``when`` (bytes), and return an :class:`Interrupted`."""
    def run(args: list, when: bytes, sig: int = signal.SIGINT, timeout: float = 180, env: dict | None = None
            ) -> Interrupted:
        # unbuffered: progress bars end their updates in \r, which a piped stderr would hold back
        proc = subprocess.Popen([str(a) for a in args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                preexec_fn=_default_sigint)
        seen = bytearray()
        reader = threading.Thread(target=lambda: [seen.extend(b) for b in iter(lambda: proc.stderr.read(1), b"")],
                                  daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        try:
            while not re.search(when, bytes(seen)) and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert proc.poll() is None, f"the command ended before {when!r}: {seen.decode(errors='replace')}"
            # never signal on the timeout: the test would pass while signalling some other phase
            assert re.search(when, bytes(seen)), f"no {when!r} within {timeout} s: {seen.decode(errors='replace')}"
            proc.send_signal(sig)
            sent = time.monotonic()
            proc.wait(timeout=timeout)
            seconds = time.monotonic() - sent
        finally:
            proc.kill()
        reader.join(timeout=10)
        return Interrupted(proc.returncode, proc.stdout.read().decode(), seen.decode(errors="replace"), seconds)
    return run


def image_shape(data_dim: int) -> tuple[int, int, int]:
    """Rows of ``data_dim`` numbers as one-channel images of 2 x data_dim/2 pixels, which the
    registry-wide tests give every family (a convolutional model needs an image shape)."""
    return (1, 2, data_dim // 2)


def family_config(model: str, guide: str, **options):
    """A FitConfig of ``model`` and ``guide`` for the tiny rows of the registry-wide tests: one
    conv layer of 3 channels for --model conv (2 x W images are halved once)."""
    from pyrovae.config import FitConfig
    return FitConfig(model=model, guide=guide, channels=(3,), **options)


def served_families() -> list[tuple[str, str]]:
    """Every (model, guide) pair of the registries that the families agree to build (a guide may
    refuse a model, or a model a guide): what registry-wide tests run over, so a new family joins
    them by its registry line alone."""
    from pyrovae.config import build_vae
    from pyrovae.core.errors import UsageError
    from pyrovae.guides import GUIDES
    from pyrovae.models import MODELS
    served = []
    for model in MODELS:
        for guide in GUIDES:
            try:
                build_vae(family_config(model, guide, latent_dim=2, hidden=(4,), z1_dim=2, z1_hidden=(3,),
                                        flow_hidden=4), 6, 5, image_shape(6))
            except UsageError:
                continue
            served.append((model, guide))
    return served


# CLI helpers of the io tests: a small run's options, the CLI as a subprocess, and its one error line
TINY = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "50", "--quiet", "--device", "cpu"]
PYROVAE = [sys.executable, "-m", "pyrovae.cli.main"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_line(result, code: int, kind: str = "error") -> str:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    return only_line(result.stderr, kind)


def only_line(stderr: str, kind: str = "error") -> str:
    lines = [line for line in stderr.replace("\r", "\n").splitlines()
             if line.startswith("pyrovae:") or "Traceback" in line]
    assert len(lines) == 1 and lines[0].startswith(f"pyrovae: {kind}: "), stderr
    return lines[0]
