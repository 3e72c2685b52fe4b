"""torch.distributed on this machine: 2 processes x 1 thread (torchrun, gloo) against 1 process x 2
threads, for training on MNIST and for an AIS evaluation, timed alternately (``--repeats``).

Training: ``pyrovae fit --dataset mnist --epochs E`` (per-row noise in both, so the two runs
compute the same numbers; the single process also runs without the JIT, as DDP does); per-epoch
training seconds from metrics.jsonl. Evaluation: ``pyrovae evaluate RUN --method ais --steps T``
on the first N test points; wall seconds of the command.

    python benchmarks/bench_distributed.py --data-dir ../shared/data [--epochs 3] [--n 200] [--steps 100]
        [--repeats 2] [--results DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import data_dir as find_data_dir  # noqa: E402
from common import log, machine, write_results

PYROVAE = [sys.executable, "-m", "pyrovae.cli.main"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
            "pyrovae.cli.main"]


def timed(command: list[str], threads: int) -> tuple[float, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    root = find_data_dir(args.data_dir)
    if root is None:
        log("bench_distributed: no MNIST; skipped")
        return
    work = Path(tempfile.mkdtemp(prefix="bench-ddp-"))
    fit = ["fit", "--dataset", "mnist", "--data-dir", root, "--epochs", str(args.epochs), "--quiet",
           "--device", "cpu", "--noise", "per-row", "--no-jit", "--overwrite", "--curves-every", "1e9"]
    rows: dict[str, list] = {"fit_1x2": [], "fit_2x1": [], "ais_1x2": [], "ais_2x1": []}
    for repeat in range(args.repeats):
        for name, launcher, threads in (("1x2", PYROVAE, 2), ("2x1", TORCHRUN, 1)):
            run_dir = work / f"run-{name}"
            wall, out = timed([*launcher, *fit, "--out", str(run_dir)], threads)
            metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            per_epoch = statistics.median(m["train_seconds"] for m in metrics)
            rows[f"fit_{name}"].append({"wall": round(wall, 2), "train_seconds_per_epoch": per_epoch,
                                        "test_elbo": metrics[-1]["test_elbo"]})
            log(f"repeat {repeat}: fit {name}: {per_epoch:.2f} s/epoch, {wall:.1f} s wall")
        for name, launcher, threads in (("1x2", PYROVAE, 2), ("2x1", TORCHRUN, 1)):
            wall, out = timed([*launcher, "evaluate", str(work / "run-1x2"), "--method", "ais", "--steps",
                               str(args.steps), "--limit", str(args.n), "--is-k", "0", "--no-record"], threads)
            rows[f"ais_{name}"].append({"wall": round(wall, 2), "log_likelihood": json.loads(out)["log_likelihood"]})
            log(f"repeat {repeat}: AIS {name}: {wall:.1f} s")
    fit_single = statistics.median(r["train_seconds_per_epoch"] for r in rows["fit_1x2"])
    fit_ddp = statistics.median(r["train_seconds_per_epoch"] for r in rows["fit_2x1"])
    ais_single = statistics.median(r["wall"] for r in rows["ais_1x2"])
    ais_ddp = statistics.median(r["wall"] for r in rows["ais_2x1"])
    results = {"machine": machine(), "command": " ".join(sys.argv), "runs": rows,
               "fit_ratio_2x1_over_1x2": round(fit_ddp / fit_single, 3),
               "ais_ratio_2x1_over_1x2": round(ais_ddp / ais_single, 3)}
    table = "\n".join([
        "| job | 1 process x 2 threads | 2 processes x 1 thread (torchrun) | ratio |", "|---|---|---|---|",
        f"| MNIST epoch, training s (median) | {fit_single:.2f} | {fit_ddp:.2f} | {fit_ddp / fit_single:.2f} |",
        f"| AIS T={args.steps}, {args.n} points, wall s (median) | {ais_single:.1f} | {ais_ddp:.1f} | "
        f"{ais_ddp / ais_single:.2f} |"])
    write_results("distributed", results, table, args.results)


if __name__ == "__main__":
    main()
