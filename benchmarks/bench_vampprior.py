"""The VampPrior (Tomczak & Welling 2018) against the plain VAE at equal minutes of training, MNIST.

Both 784-400-50 with Trace_ELBO, trained as a user would (``pyrovae fit ... --minutes M``, the
epochs unbounded so the budget is what stops them), one after the other and each alone; then
log p(x) by importance sampling (K=5000) on the same first ``--limit`` test points of each:

    pyrovae fit --dataset mnist --model vampprior --pseudo-inputs 500 --minutes M --epochs 100000 --out RUN/vampprior
    pyrovae fit --dataset mnist --model vae --minutes M --epochs 100000 --out RUN/vae
    pyrovae evaluate RUN/<model> --k 5000 --limit N

    python benchmarks/bench_vampprior.py --data-dir ../shared/data [--minutes 10] [--limit 1000]
                                         [--pseudo-inputs 500] [--runs DIR] [--reuse] [--results DIR]

``--reuse``: a model whose run in --runs already spent its budget (metrics.jsonl says so) is not
trained again; its epochs, seconds and test ELBO are read from that run's metrics.jsonl.

The difference of the two estimates is taken per point (same points), with its SE. Run it alone
(``flock -x /work/bench.lock ...`` on the shared machine). Results: vampprior.{json,md} in
--results (default benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import command_line, log, machine, require_data_dir, run_pyrovae, write_results  # noqa: E402


def trained(run: Path, minutes: float) -> dict | None:
    """What fit reported for ``run``, read back from its metrics.jsonl, if its training spent
    ``minutes`` (the budget a run of this benchmark stops at); else None."""
    metrics_file = run / "metrics.jsonl"
    if not (run / "checkpoint.pt").exists() or not metrics_file.exists():
        return None
    metrics = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    seconds = sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0) for m in metrics)
    if seconds < 0.9 * 60 * minutes:   # the epochs' own seconds: the budget's clock also counts checkpoints
        return None
    return {"epochs": len(metrics), "seconds": seconds, "test_elbo": metrics[-1].get("test_elbo"),
            "read_from": str(metrics_file)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--minutes", type=float, default=10.0, help="Training budget of each model.")
    parser.add_argument("--limit", type=int, default=1000, help="Test points of the IS estimates.")
    parser.add_argument("--pseudo-inputs", type=int, default=500)
    parser.add_argument("--runs", default=None, help="Folder for the two runs [default: a temporary one].")
    parser.add_argument("--reuse", action="store_true", help="Keep a run in --runs that already spent its budget.")
    parser.add_argument("--results", default=None)
    args = parser.parse_args()
    root = require_data_dir(args.data_dir)
    env = {**os.environ, "PYROVAE_DATA_DIR": root}
    runs = Path(args.runs or tempfile.mkdtemp(prefix="bench-vampprior-"))
    results: dict = {"machine": machine(), "command": command_line(), "minutes": args.minutes, "limit": args.limit,
                     "models": {}}
    recipes = {"vampprior": ["--model", "vampprior", "--pseudo-inputs", str(args.pseudo_inputs)], "vae": ["--model", "vae"]}
    per_point = {}
    for name, recipe in recipes.items():
        run = runs / name
        fit = ["fit", "--dataset", "mnist", "--data-dir", root, *recipe, "--minutes", str(args.minutes),
               "--epochs", "100000", "--out", str(run), "--overwrite", "--quiet"]
        fitted = trained(run, args.minutes) if args.reuse else None
        if fitted is None:
            log(f"training: pyrovae {' '.join(fit)}")
            fitted, fit_seconds = run_pyrovae(*fit, env=env)
        else:
            log(f"reusing {run}: {fitted['epochs']} epochs in {fitted['seconds']:.0f} s")
            fit_seconds = fitted["seconds"]
        points = run / "is_per_point.npz"
        evaluate = ["evaluate", str(run), "--k", "5000", "--limit", str(args.limit), "--per-point", str(points)]
        log(f"evaluating: pyrovae {' '.join(evaluate)}")
        estimate, is_seconds = run_pyrovae(*evaluate, env=env)
        per_point[name] = np.load(points)["log_px"]
        results["models"][name] = {"fit": fitted, "fit_wall_seconds": round(fit_seconds, 1), "is": estimate,
                                   "is_wall_seconds": round(is_seconds, 1), "load_after": os.getloadavg()[0]}
    difference = per_point["vampprior"] - per_point["vae"]
    results["vampprior_minus_vae"] = {"mean": float(difference.mean()),
                                      "se": float(difference.std(ddof=1) / np.sqrt(len(difference)))}
    rows = []
    for name, model in results["models"].items():
        fitted, estimate = model["fit"], model["is"]
        rows.append(f"| `{' '.join(recipes[name])}` | {fitted['epochs']} | {fitted['seconds']:.0f} | "
                    f"{fitted['test_elbo']:.2f} | {estimate['log_likelihood']:.2f} ± {estimate['log_likelihood_se']:.2f} "
                    f"(ELBO {estimate['elbo']:.2f}; k-hat > 0.7: {100 * estimate['khat_frac_gt_0_7']:.0f}%) | "
                    f"{model['is_wall_seconds']:.0f} |")
    gap = results["vampprior_minus_vae"]
    table = "\n".join([
        f"| model (784-400-50, Trace_ELBO), {args.minutes:g} minutes each | epochs | training s | test ELBO (10,000 points) "
        f"| log p(x), IS K=5000, first {args.limit} test points | IS s |",
        "|---|---|---|---|---|---|", *rows, "",
        f"VampPrior − VAE on the same {args.limit} points: **{gap['mean']:+.2f} ± {gap['se']:.2f} nats**."])
    write_results("vampprior", results, table, args.results)


if __name__ == "__main__":
    main()
