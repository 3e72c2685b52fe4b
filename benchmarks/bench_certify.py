"""`pyrovae certify` on a trained MNIST run: the certificate, the chosen T, the time, and log p̂
beside IS (K=5000) on the same points.

Trains the run first when ``--run-dir`` holds none (``pyrovae fit --dataset mnist --epochs N``, or
``--preset NAME --minutes M``), then certifies its first ``--limit`` test points (all 10,000 by
default) in a subprocess, as a user would. Run it alone (``flock -x /work/bench.lock ...`` on the
shared machine): it records the load and the other processes at the start.

    python benchmarks/bench_certify.py --data-dir ../shared/data --run-dir benchmarks/runs/mnist10 --epochs 10
    python benchmarks/bench_certify.py --data-dir ../shared/data --run-dir benchmarks/runs/mnist-elbo \
        --preset mnist-elbo --minutes 20

One JSON object goes to stdout, progress to stderr; results go to certify_<name>.{json,md} in
--results (default benchmarks/results), <name> the run folder's name and the number of points.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine, require_data_dir, run_pyrovae, write_results  # noqa: E402


def _load() -> dict:
    top = subprocess.run(["ps", "-eo", "pcpu,etime,args", "--sort=-pcpu"], stdout=subprocess.PIPE, text=True).stdout
    return {"load_average_1min": os.getloadavg()[0], "busiest_processes": [line[:160] for line in
                                                                           top.splitlines()[1:6]]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--epochs", type=int, default=10, help="Epochs of the run to train when there is none.")
    parser.add_argument("--preset", default=None)
    parser.add_argument("--minutes", type=float, default=None)
    parser.add_argument("--limit", type=int, default=None, help="Test points to certify [default: all].")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    root = require_data_dir(args.data_dir)
    env = {**os.environ, "PYROVAE_DATA_DIR": root}
    threads = ["--threads", str(args.threads)] if args.threads else []
    results: dict = {"machine": {**machine(), **_load()}, "run_dir": args.run_dir}
    if not (Path(args.run_dir) / "checkpoint.pt").exists():
        fit = ["fit", "--dataset", "mnist", "--data-dir", root, "--out", args.run_dir, "--quiet", *threads]
        fit += ["--preset", args.preset] if args.preset else []
        # a time budget trains until it is spent (the epochs only bound it from above)
        fit += ["--minutes", str(args.minutes), "--epochs", "100000"] if args.minutes else ["--epochs", str(args.epochs)]
        log(f"training: pyrovae {' '.join(fit)}")
        results["fit"], results["fit_seconds"] = run_pyrovae(*fit, env=env)
    command = ["certify", args.run_dir, "--data-dir", root, *threads]
    command += ["--limit", str(args.limit)] if args.limit else []
    log(f"certifying: pyrovae {' '.join(command)}")
    certificate, seconds = run_pyrovae(*command, env=env)
    results.update(certificate=certificate, certify_command="pyrovae " + " ".join(command),
                   certify_seconds=round(seconds, 1), load_at_the_end=_load())
    c, check = certificate, certificate["convergence"]
    results["minutes_for_10000"] = round((seconds - c["seconds"]["estimate"] * (1 - 10_000 / c["n"])) / 60, 1)
    n = c["n"]
    per_1000 = c["seconds"]["estimate"] / n * 1000           # the part that grows with the points
    fixed = seconds - c["seconds"]["estimate"]               # BDMC, the check, loading the run
    table = "\n".join([
        "| what | value |", "|---|---|",
        f"| run | {args.run_dir} (epoch {c['epoch']}) |",
        f"| certified | {c['certified']} (target gap {c['target_gap']} nats) |",
        f"| log p(x), AIS at the chosen T, {n} test points | {c['log_likelihood']:.3f} ± {c['log_likelihood_se']:.3f} |",
        f"| IS, K={c['is_k']}, same points | {c['is_log_likelihood']:.3f} ± {c['is_log_likelihood_se']:.3f} "
        f"(AIS − IS {c['ais_minus_is']:.3f}) |",
        f"| ELBO, same points | {c['elbo']:.3f} |",
        f"| chosen T (C={c['chains']}, L={c['leapfrog']}) | {c['steps']} |",
        f"| BDMC gap at T ({c['bdmc_n']} simulated points) | {c['bdmc_gap']:.4f} ± {c['bdmc_gap_se']:.4f} "
        f"(upper bound {c['bdmc_gap_upper']:.4f}) |",
        "| BDMC ladder | " + ", ".join(f"T={r['steps']}: {r['gap']:.4f} ± {r['gap_se']:.4f} ({r['seconds']:.0f} s)"
                                    for r in c["bdmc_ladder"]) + " |",
        f"| check at 2T on {check['points']} points | {check['difference']:.4f} ± {check['difference_se']:.4f} |",
        f"| acceptance | {c['accept_rate_mean']:.3f} |",
        f"| seconds | {seconds:.0f} in all (BDMC {c['seconds']['bdmc']:.0f}, estimate {c['seconds']['estimate']:.0f}, "
        f"check {c['seconds']['check']:.0f}); the estimate {per_1000 / 60:.1f} min per 1000 points, so "
        f"{(fixed + 10 * per_1000) / 60:.0f} min for all 10,000 at this rate |",
        f"| load | {results['machine']['load_average_1min']:.2f} at the start, "
        f"{results['load_at_the_end']['load_average_1min']:.2f} at the end |"])
    name = f"certify_{Path(args.run_dir).name}_n{n}"
    write_results(name, results, table, args.results)


if __name__ == "__main__":
    main()
