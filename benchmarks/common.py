"""Shared helpers of the benchmarks: the machine's description, timing, and result files."""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

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
            "python": platform.python_version(), "cuda": torch.cuda.is_available()}


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


def write_results(name: str, results: dict, table: str) -> None:
    """benchmarks/results/NAME.json and NAME.md, plus the JSON on stdout."""
    from pyrovae.runs import atomic_path

    RESULTS.mkdir(exist_ok=True)
    info = results["machine"]
    header = (f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} "
              f"({info['torch_threads']} threads), pyro {info['pyro']}, Python {info['python']}, "
              f"{info['platform']}.\n\n")
    for path, text in ((RESULTS / f"{name}.json", json.dumps(results, indent=2) + "\n"),
                       (RESULTS / f"{name}.md", header + table + "\n")):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
    print(json.dumps(results), flush=True)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
