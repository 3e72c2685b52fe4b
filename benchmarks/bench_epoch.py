"""Seconds per MNIST epoch: `pyrovae fit` against the loops its users would write instead.

Two peers, neither importing pyrovae: the plain PyTorch loop (benchmarks/plain_vae.py: its own
modules, torch.bernoulli on each batch of 128 (``--batch-size``), torch's Adam at 1e-3, a test ELBO per epoch) and
the Pyro-example loop (benchmarks/pyro_example_vae.py: Pyro's examples/vae/vae.py style, model
and guide methods, SVI with JitTrace_ELBO and pyro.optim.Adam, svi.evaluate_loss on the test set
per epoch). Each repeat runs the three, each in a fresh subprocess, in an order rotated by one
per repeat (over three repeats each takes each place once), so drifts of the machine hit all alike:

    plain:   python benchmarks/plain_vae.py --data-dir DIR --epochs E --seed S --batch-size B [--threads N]
    pyro:    python benchmarks/pyro_example_vae.py --data-dir DIR --epochs E --seed S --batch-size B [--threads N]
    pyrovae: pyrovae fit --dataset mnist --data-dir DIR --epochs E --out TMP --overwrite --quiet --seed S --batch-size B
             [--threads N, or OMP_NUM_THREADS=N MKL_NUM_THREADS=N if fit has no --threads] [--pyrovae-args]

Measured, per repeat: seconds per epoch as a user waits for them (pyrovae's JSON `seconds` / epochs,
which includes its test ELBO, checkpoints and pictures; a peer's training + test ELBO); the
training part alone (the sum of metrics.jsonl's `train_seconds` / epochs; a peer's train seconds
/ epochs); each subprocess's wall-clock from outside (with Python start and data loading); and
the ratios pyrovae / peer. The table gives the medians over repeats; the JSON also records the
1-minute load average before every run and the busiest processes at the start and the end.

    python benchmarks/bench_epoch.py --data-dir ../shared/data [--epochs 3] [--repeats 3] [--seed 0] [--batch-size 128]
                                     [--threads N] [--pyrovae-args "--no-jit"] [--results DIR]
                                     [--baseline OTHER/.venv/bin/python]

``--baseline``: a Python whose ``pyrovae`` console script is another build (e.g. a worktree of the
commit before a change); it joins the rotation as a fourth run, and the table adds the ratio of
this build to it: whether a change made fit slower, measured alternated in one run.

Results: epoch.{json,md} in --results (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import command_line, machine, write_results  # benchmarks/: the script's folder, first on sys.path

HERE = Path(__file__).resolve().parent
PEERS = {"plain": HERE / "plain_vae.py", "pyro": HERE / "pyro_example_vae.py"}
NAMES = {"pyrovae": "pyrovae fit", "plain": "plain PyTorch loop", "pyro": "Pyro-example loop (JitTrace_ELBO)"}
KEYS = ("epoch_s", "epoch_no_pictures_s", "train_s", "eval_s", "wall_s", "test_elbo")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def load() -> float:
    return round(os.getloadavg()[0], 2)


def busiest(count: int = 5) -> list[str]:
    """The processes using the most CPU (ps), to say what ran beside the measurement."""
    done = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True, check=False)
    return [line[:160] for line in done.stdout.splitlines()[1:count + 1]]


def run_json(command: list[str], env: dict | None = None) -> tuple[dict, float]:
    """The last JSON line a subprocess prints on stdout (its stderr passes through), and its wall time."""
    log(f"$ {shlex.join(command)}   (load {load()})")
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, env=env)
    wall = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed with exit code {done.returncode}: {shlex.join(command)}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1]), wall


def pyrovae_command(python: str = sys.executable) -> str:
    beside = Path(python).parent / "pyrovae"
    return str(beside) if beside.exists() else (shutil.which("pyrovae") or sys.exit("no pyrovae console script"))


def peer_run(args, name: str) -> dict:
    command = [sys.executable, str(PEERS[name]), "--data-dir", args.data_dir, "--epochs", str(args.epochs),
               "--seed", str(args.seed), "--batch-size", str(args.batch_size)] + \
        (["--threads", str(args.threads)] if args.threads else [])
    load_before = load()
    out, wall = run_json(command)
    e, total = out["epochs"], out["total"]
    return {"epoch_s": total["epoch_seconds"] / e, "epoch_no_pictures_s": total["epoch_seconds"] / e,
            "train_s": total["train_seconds"] / e, "eval_s": total["eval_seconds"] / e, "wall_s": wall,
            "test_elbo": out["test_elbo"], "threads": out["torch_threads"], "load_before": load_before}


def pyrovae_run(args, exe: str, threads_option: bool) -> dict:
    env = dict(os.environ)
    extra = shlex.split(args.pyrovae_args)
    if args.threads and threads_option:
        extra += ["--threads", str(args.threads)]
    elif args.threads:
        env.update(OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    load_before = load()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        command = [exe, "fit", "--dataset", "mnist", "--data-dir", args.data_dir, "--epochs", str(args.epochs),
                   "--out", str(run_dir), "--overwrite", "--quiet", "--seed", str(args.seed),
                   "--batch-size", str(args.batch_size), *extra]
        out, wall = run_json(command, env)
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    e = out["epochs"]
    return {"epoch_s": out["seconds"] / e, "epoch_no_pictures_s": (out["seconds"] - out.get("pictures_seconds", 0.0)) / e,
            "train_s": sum(m["train_seconds"] for m in metrics) / e,
            "eval_s": sum(m.get("eval_seconds", 0.0) for m in metrics) / e, "wall_s": wall,
            "test_elbo": out.get("test_elbo"), "pictures_s": out.get("pictures_seconds"), "load_before": load_before}


def median_of(values: list) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def table(results: dict) -> str:
    m, a = results["median"], results["args"]
    extra = f" {a['pyrovae_args']}" if a["pyrovae_args"] else ""
    rows = [f"| MNIST, {a['epochs']} epochs, batch {a.get('batch_size', 128)}, {a['repeats']} repeats, medians | s / epoch (fit's JSON seconds / epochs) "
            f"| s / epoch without the pictures drawn at the end | s / epoch (training only) | subprocess wall s "
            f"| test ELBO |",
            "|---|---|---|---|---|---|"]
    for who in [who for who in NAMES if f"{who}_epoch_s" in m]:
        rows.append(f"| {NAMES[who]}{extra if who == 'pyrovae' else ''} | {m[f'{who}_epoch_s']:.2f} "
                    f"| {m[f'{who}_epoch_no_pictures_s']:.2f} | {m[f'{who}_train_s']:.2f} | {m[f'{who}_wall_s']:.1f} "
                    f"| {m[f'{who}_test_elbo']:.2f} |")
    for peer in [peer for peer in NAMES if peer != "pyrovae" and f"ratio_{peer}_epoch_s" in m]:
        r = {key: m[f"ratio_{peer}_{key}"] for key in ("epoch_s", "epoch_no_pictures_s", "train_s", "wall_s")}
        rows.append(f"| ratio pyrovae / {NAMES[peer]} | **{r['epoch_s']:.2f}** | {r['epoch_no_pictures_s']:.2f} "
                    f"| {r['train_s']:.2f} | {r['wall_s']:.2f} | |")
    loads = [row[who]["load_before"] for row in results["repeats"] for who in row["order"]]
    rows += ["", (f"1-minute load average before each run: {min(loads)} to {max(loads)}. Busiest processes at the "
                  "start: ") + "; ".join(f"`{line.strip()}`" for line in results["busiest_at_start"][:3]) + "."]
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128, help="training rows per step, in every loop")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--pyrovae-args", default="", help='extra options of pyrovae fit, e.g. "--no-jit"')
    parser.add_argument("--results", default=None, help="folder for epoch.{json,md} (default benchmarks/results)")
    parser.add_argument("--baseline", default=None, metavar="PYTHON",
                        help="a Python beside another build's pyrovae script: timed in the same rotation")
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
    info = machine()
    if args.threads:
        info["torch_threads"] = args.threads   # what the subprocesses used, not this process
    at_start = busiest()
    runs = {"pyrovae": lambda: pyrovae_run(args, exe, threads_option), "plain": lambda: peer_run(args, "plain"),
            "pyro": lambda: peer_run(args, "pyro")}
    if args.baseline:
        baseline = pyrovae_command(args.baseline)
        NAMES["baseline"] = f"pyrovae fit, baseline build ({args.baseline})"
        runs["baseline"] = lambda: pyrovae_run(args, baseline, threads_option)
    order = list(runs)
    repeats = []
    for r in range(args.repeats):
        turn = order[r % len(order):] + order[:r % len(order)]
        row = {who: runs[who]() for who in turn}
        row["order"] = turn
        for peer in [who for who in runs if who != "pyrovae"]:
            for key in ("epoch_s", "epoch_no_pictures_s", "train_s", "wall_s"):
                row[f"ratio_{peer}_{key}"] = row["pyrovae"][key] / row[peer][key]
        repeats.append(row)
        pv, pl, py = row["pyrovae"], row["plain"], row["pyro"]
        log(f"repeat {r + 1}: pyrovae {pv['epoch_s']:.2f} s/epoch ({pv['train_s']:.2f} training), "
            f"plain {pl['epoch_s']:.2f} ({pl['train_s']:.2f}), pyro {py['epoch_s']:.2f} ({py['train_s']:.2f}); "
            f"ratios {row['ratio_plain_epoch_s']:.2f} and {row['ratio_pyro_epoch_s']:.2f}"
            + (f", to the baseline build {row['ratio_baseline_epoch_s']:.2f}" if args.baseline else ""))
    median = {f"{who}_{key}": median_of([row[who][key] for row in repeats]) for who in runs for key in KEYS}
    median.update({key: statistics.median(row[key] for row in repeats) for key in repeats[0] if key.startswith("ratio")})
    results = {"machine": info, "args": vars(args),
               "pyrovae_threads_via": ("--threads" if threads_option else "OMP_NUM_THREADS") if args.threads else None,
               "busiest_at_start": at_start, "busiest_at_end": busiest(), "load_at_end": load(),
               "repeats": repeats, "median": median, "command": command_line()}
    write_results("epoch", results, table(results), args.results)


if __name__ == "__main__":
    main()
