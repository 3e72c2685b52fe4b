"""Two installed pyrovae versions side by side: seconds per MNIST epoch of `pyrovae fit`, and the
SVI step against the plain PyTorch loop (bench_speed.py of each version), alternated in one run.

Each repeat runs this checkout's venv and the other's, each in a fresh subprocess, in alternating
order (this one first in even repeats), so drifts of the machine hit both alike:

    fit:   VENV/bin/pyrovae fit --dataset mnist --data-dir DIR --epochs E --out TMP --overwrite --quiet --seed 0
    step:  VENV/bin/python CHECKOUT/benchmarks/bench_speed.py --data-dir DIR --batch-sizes 128 --repeats R
           --warmup 10 --epochs 0 --no-compile --guides amortized --objectives trace,meanfield --results TMP

    python benchmarks/bench_versions.py --data-dir ../shared/data --other /path/to/other/checkout
                                        [--epochs 3] [--repeats 3] [--name redesign]

Results: versions_<name>.{json,md} in benchmarks/results: medians over repeats of JSON `seconds`
/ epochs (what a user waits for), `seconds_per_epoch` (training alone), and bench_speed's ratios.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
THIS = HERE.parent


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fit_epoch(checkout: Path, data_dir: str, epochs: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(checkout / ".venv/bin/pyrovae"), "fit", "--dataset", "mnist", "--data-dir", data_dir,
                   "--epochs", str(epochs), "--out", f"{tmp}/run", "--overwrite", "--quiet", "--seed", "0"]
        out = subprocess.run(command, capture_output=True, text=True, check=True, cwd=tmp)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"seconds_per_epoch_all_in": result["seconds"] / result["epochs"],
            "seconds_per_epoch_training": result["seconds_per_epoch"], "test_elbo": result["test_elbo"]}


def step_ratios(checkout: Path, data_dir: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        command = [str(checkout / ".venv/bin/python"), str(checkout / "benchmarks/bench_speed.py"), "--data-dir",
                   data_dir, "--batch-sizes", "128", "--repeats", str(repeats), "--warmup", "10", "--epochs", "0",
                   "--no-compile", "--guides", "amortized", "--objectives", "trace,meanfield", "--results", tmp]
        subprocess.run(command, capture_output=True, text=True, check=True, cwd=checkout)
        return json.loads((Path(tmp) / "speed.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--other", required=True, help="the other checkout, with its own .venv")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--speed-repeats", type=int, default=50)
    parser.add_argument("--name", default="other")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    checkouts = {"this": THIS, args.name: Path(args.other).resolve()}
    runs: dict[str, list[dict]] = {label: [] for label in checkouts}
    speeds: dict[str, list[dict]] = {label: [] for label in checkouts}
    started = time.time()
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else None
    for repeat in range(args.repeats):
        order = list(checkouts) if repeat % 2 == 0 else list(reversed(checkouts))
        for label in order:
            runs[label].append(fit_epoch(checkouts[label], args.data_dir, args.epochs))
            log(f"repeat {repeat + 1} {label} fit: {runs[label][-1]}")
        for label in order:
            speeds[label].append(step_ratios(checkouts[label], args.data_dir, args.speed_repeats))
            log(f"repeat {repeat + 1} {label} step measured")
    summary = {}
    for label in checkouts:
        summary[label] = {key: statistics.median(r[key] for r in runs[label]) for key in runs[label][0]}
        summary[label]["speed"] = speeds[label]
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    record = {"command": " ".join(sys.argv), "cpu": cpu, "load_at_start": load, "minutes": (time.time() - started) / 60,
              "runs": runs, "summary": summary}
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    (results / f"versions_{args.name}.json").write_text(json.dumps(record, indent=2, default=str))
    lines = [f"# pyrovae fit per epoch and step, this checkout against {args.name}", "",
             f"Command: `{record['command']}`  ", f"CPU: {cpu}; load at start {load}; {record['minutes']:.1f} min", "",
             "| version | s/epoch all in (median) | s/epoch training | test ELBO |", "|---|---|---|---|"]
    for label, values in summary.items():
        lines.append(f"| {label} | {values['seconds_per_epoch_all_in']:.3f} | {values['seconds_per_epoch_training']:.3f} "
                     f"| {values['test_elbo']:.3f} |")
    (results / f"versions_{args.name}.md").write_text("\n".join(lines) + "\n")
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
