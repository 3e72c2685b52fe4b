"""Seconds per MNIST epoch: `pyrovae fit` against the plain PyTorch loop (benchmarks/plain_vae.py).

Each repeat runs both, each in a fresh subprocess, in alternating order (plain first in even
repeats, pyrovae first in odd ones) so drifts of the machine hit both alike:

    plain:   python benchmarks/plain_vae.py --data-dir DIR --epochs E --seed S [--threads N]
    pyrovae: pyrovae fit --dataset mnist --data-dir DIR --epochs E --out TMP --overwrite --quiet --seed S
             [--threads N, or OMP_NUM_THREADS=N MKL_NUM_THREADS=N if fit has no --threads] [--pyrovae-args]

Measured, per repeat: seconds per epoch as a user waits for them (pyrovae's JSON `seconds` / epochs,
which includes its test ELBO, checkpoints and pictures; the plain loop's training + test ELBO);
the training part alone (the sum of metrics.jsonl's `train_seconds` / epochs; the plain loop's
train seconds / epochs); each subprocess's wall-clock from outside (with Python start and data
loading); and the ratios pyrovae / plain. The table gives the medians over repeats.

    python benchmarks/bench_epoch.py --data-dir ../shared/data [--epochs 3] [--repeats 3] [--seed 0]
                                     [--threads N] [--pyrovae-args "--no-jit"] [--results DIR]

Results: epoch.{json,md} in --results (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLAIN = HERE / "plain_vae.py"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_json(command: list[str], env: dict | None = None) -> tuple[dict, float]:
    """The last JSON line a subprocess prints on stdout (its stderr passes through), and its wall time."""
    log("$ " + shlex.join(command))
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed with exit code {done.returncode}: {shlex.join(command)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), wall


def pyrovae_command() -> str:
    beside = Path(sys.executable).parent / "pyrovae"
    return str(beside) if beside.exists() else (shutil.which("pyrovae") or sys.exit("no pyrovae console script"))


def plain_run(args) -> dict:
    command = [sys.executable, str(PLAIN), "--data-dir", args.data_dir, "--epochs", str(args.epochs),
               "--seed", str(args.seed)] + (["--threads", str(args.threads)] if args.threads else [])
    out, wall = run_json(command)
    e = out["epochs"]
    return {"epoch_s": out["total"]["epoch_seconds"] / e, "epoch_no_pictures_s": out["total"]["epoch_seconds"] / e,
            "train_s": out["total"]["train_seconds"] / e,
            "eval_s": out["total"]["eval_seconds"] / e, "wall_s": wall, "test_elbo": out["test_elbo"],
            "threads": out["torch_threads"]}


def pyrovae_run(args, exe: str, threads_option: bool) -> dict:
    env = dict(os.environ)
    extra = shlex.split(args.pyrovae_args)
    if args.threads and threads_option:
        extra += ["--threads", str(args.threads)]
    elif args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [exe, "fit", "--dataset", "mnist", "--data-dir", args.data_dir, "--epochs", str(args.epochs),
                   "--out", str(run_dir), "--overwrite", "--quiet", "--seed", str(args.seed), *extra]
        out, wall = run_json(command, env)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    e = out["epochs"]
    return {"epoch_s": out["seconds"] / e, "epoch_no_pictures_s": (out["seconds"] - out.get("pictures_seconds", 0.0)) / e,
            "train_s": sum(m["train_seconds"] for m in metrics) / e,
            "eval_s": sum(m.get("eval_seconds", 0.0) for m in metrics) / e, "wall_s": wall,
            "test_elbo": out.get("test_elbo")}


def median_of(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def machine_info(threads: int | None) -> dict:
    """common.machine() if it imports; else the same keys, inlined (pyrovae may be mid-restructuring)."""
    try:
        from common import machine
        info = machine()
    except Exception:   # noqa: BLE001
        import torch
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
        try:
            import pyro
            pyro_version = pyro.__version__
        except Exception:   # noqa: BLE001
            pyro_version = "unknown"
        info = {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
                "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "pyro": pyro_version,
                "python": platform.python_version(), "cuda": torch.cuda.is_available()}
    if threads:
        info["torch_threads"] = threads   # what the subprocesses used, not this process
    return info


def write(name: str, results: dict, table: str, folder: str | None = None) -> None:
    """common.write_results if it works; else the same two files and the JSON on stdout."""
    try:
        from common import write_results

        import pyrovae.runs  # noqa: F401  (write_results writes through it)
    except Exception:   # noqa: BLE001
        pass
    else:
        write_results(name, results, table, folder)
        return
    info = results["machine"]
    header = (f"Machine: {info['cpu']}, {info['cpu_count']} CPUs, torch {info['torch']} "
              f"({info['torch_threads']} threads), pyro {info['pyro']}, Python {info['python']}, "
              f"{info['platform']}.\n\n")
    out = Path(folder) if folder else HERE / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / f"{name}.md").write_text(header + table + "\n")
    print(json.dumps(results), flush=True)


def table(results: dict) -> str:
    m, a = results["median"], results["args"]
    extra = f" {a['pyrovae_args']}" if a["pyrovae_args"] else ""
    no_pictures = m.get("pyrovae_epoch_no_pictures_s")
    ratio_no_pictures = no_pictures / m["plain_epoch_s"] if no_pictures else float("nan")
    rows = [f"| MNIST, {a['epochs']} epochs, {a['repeats']} repeats, medians | s / epoch (fit's JSON seconds / epochs) "
            f"| s / epoch without the pictures drawn at the end | s / epoch (training only) | subprocess wall s "
            f"| test ELBO |",
            "|---|---|---|---|---|---|",
            f"| pyrovae fit{extra} | {m['pyrovae_epoch_s']:.2f} | {no_pictures or float('nan'):.2f} "
            f"| {m['pyrovae_train_s']:.2f} | {m['pyrovae_wall_s']:.1f} | {m['pyrovae_test_elbo'] or float('nan'):.2f} |",
            f"| plain PyTorch loop | {m['plain_epoch_s']:.2f} | {m['plain_epoch_s']:.2f} | {m['plain_train_s']:.2f} "
            f"| {m['plain_wall_s']:.1f} | {m['plain_test_elbo']:.2f} |",
            f"| ratio pyrovae / plain | {m['ratio_epoch']:.2f} | {ratio_no_pictures:.2f} | {m['ratio_train']:.2f} "
            f"| {m['ratio_wall']:.2f} | |"]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pyrovae-args", default="", help='extra options of pyrovae fit, e.g. "--no-jit"')
    parser.add_argument("--results", default=None, help="folder for epoch.{json,md} (default benchmarks/results)")
    argv = sys.argv[1:]
    if "--pyrovae-args" in argv[:-1]:   # its value starts with "--": glue it on, or argparse takes it for an option
        i = argv.index("--pyrovae-args")
        argv[i:i + 2] = [f"--pyrovae-args={argv[i + 1]}"]
    args = parser.parse_args(argv)
    if not args.data_dir or not (Path(args.data_dir) / "MNIST" / "raw").is_dir():
        parser.error("pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
    args.data_dir = str(Path(args.data_dir).resolve())
    exe = pyrovae_command()
    threads_option = "--threads" in subprocess.run([exe, "fit", "--help"], capture_output=True, text=True).stdout
    repeats = []
    for r in range(args.repeats):
        steps = [("plain", lambda: plain_run(args)), ("pyrovae", lambda: pyrovae_run(args, exe, threads_option))]
        row = {name: step() for name, step in (steps if r % 2 == 0 else steps[::-1])}
        row["ratio_epoch"] = row["pyrovae"]["epoch_s"] / row["plain"]["epoch_s"]
        row["ratio_train"] = row["pyrovae"]["train_s"] / row["plain"]["train_s"]
        row["ratio_wall"] = row["pyrovae"]["wall_s"] / row["plain"]["wall_s"]
        repeats.append(row)
        pv, pl = row["pyrovae"], row["plain"]
        log(f"repeat {r + 1}: pyrovae {pv['epoch_s']:.2f} s/epoch ({pv['train_s']:.2f} training), "
            f"plain {pl['epoch_s']:.2f} ({pl['train_s']:.2f}); "
            f"ratio {row['ratio_epoch']:.2f} ({row['ratio_train']:.2f} training)")
    median = {f"{who}_{key}": median_of([row[who][key] for row in repeats])
              for who in ("pyrovae", "plain") for key in ("epoch_s", "epoch_no_pictures_s", "train_s", "eval_s",
                                                          "wall_s", "test_elbo")}
    median.update({key: statistics.median(row[key] for row in repeats)
                   for key in ("ratio_epoch", "ratio_train", "ratio_wall")})
    results = {"machine": machine_info(args.threads), "args": vars(args),
               "pyrovae_threads_via": ("--threads" if threads_option else "OMP_NUM_THREADS") if args.threads else None,
               "repeats": repeats, "median": median, "command": " ".join(sys.argv)}
    write("epoch", results, table(results), args.results)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
