"""Shared helpers of the benchmarks: the machine's description, timing, result files, MNIST.

Every benchmark takes ``--results DIR`` (default benchmarks/results) and passes it to
:func:`write_results`, so a smoke run can write to a throwaway folder (e.g. /tmp).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent   # the project root
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import pyro
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "mkl": torch.backends.mkl.is_available(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "pyro": pyro.__version__,
            "python": platform.python_version(), "cuda": torch.cuda.is_available(),
            # what else ran: timings on a shared 2-core machine mean little under load, and with
            # OpenMP's default spin-waiting a competing process slows torch's threads many-fold
            "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
            "env": {name: os.environ[name] for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")
                    if name in os.environ}}


def interleaved_medians(steps: dict[str, Callable[[], object]], repeats: int, warmup: int) -> dict[str, float]:
    """Median seconds of each step, timing them in turn so drifts of the machine hit all alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            started = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def data_dir(option: str | None) -> str | None:
    """MNIST's folder from the option or $PYROVAE_DATA_DIR; None when neither holds MNIST/raw."""
    root = option or os.environ.get("PYROVAE_DATA_DIR")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        return root
    return None


def require_data_dir(option: str | None) -> str:
    """:func:`data_dir`, or a one-line message on stderr and exit 2 when MNIST is not there."""
    root = data_dir(option)
    if root is None:
        log("MNIST not found: pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
        sys.exit(2)
    return root


def results_dir(option: str | Path | None = None) -> Path:
    """The folder results go to: ``option`` (a --results DIR), else benchmarks/results; created."""
    folder = Path(option) if option else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_results(name: str, results: dict, table: str, folder: str | Path | None = None,
                  command: str | None = None) -> None:
    """FOLDER/NAME.json and NAME.md (FOLDER: --results, default benchmarks/results), plus the
    JSON on stdout. ``command``: what the header says ran (default: this process's command line)."""
    from pyrovae.core.files import atomic_path

    folder = results_dir(folder)
    info = results["machine"]
    header = (f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} "
              f"({info['torch_threads']} threads), pyro {info['pyro']}, Python {info['python']}, "
              f"{info['platform']}; load average {info.get('load_average_1min')} at the start.\n"
              f"Command: `{command or command_line()}`\n\n")
    for path, text in ((folder / f"{name}.json", json.dumps(results, indent=2) + "\n"),
                       (folder / f"{name}.md", header + table + "\n")):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(json.dumps(results), flush=True)


def command_line() -> str:
    """How this benchmark was started, as a user would type it from the project root."""
    script = Path(sys.argv[0])
    shown = script.relative_to(ROOT) if script.is_absolute() and ROOT in script.parents else script
    return " ".join(["python", str(shown), *sys.argv[1:]])


def mnist(root: str, train_limit: int | None = None):
    """pyrovae's MNIST Dataset from ``root``, its training split cut to the first ``train_limit``
    rows (for smoke runs; the test split is whole). Pass it as ``fit(..., data=)`` and
    ``load_run(..., data=)``."""
    from pyrovae.data import load_dataset

    dataset = load_dataset("mnist", root)
    if train_limit:
        dataset.train = dataset.train[:train_limit]
    return dataset


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_pyrovae(*args: str, env: dict) -> tuple[dict, float]:
    """``pyrovae ARGS`` in a subprocess, as a user runs it: its JSON result (the last line of
    stdout) and its wall-clock seconds; exits with its code if it fails (its stderr shows why)."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "pyrovae.cli.main", *args], stdout=subprocess.PIPE, env=env,
                          text=True)
    if done.returncode != 0:
        log(f"pyrovae {' '.join(args)} failed with exit code {done.returncode}")
        sys.exit(done.returncode)
    return json.loads(done.stdout.strip().splitlines()[-1]), time.perf_counter() - started

