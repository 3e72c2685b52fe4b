"""The MNIST log-likelihood run: train a documented recipe, then estimate test log p(x).

Recipes are pyrovae presets (pyrovae/config.py, PRESETS):

- ``mnist-elbo``: 784-500-500-50 MLPs, Bernoulli, dynamic binarization, TraceMeanField_ELBO
  (analytic KL), batch 128, Adam 1e-3 decayed by 0.99 per epoch, KL warm-up over 10 epochs.
- ``mnist-iwae``: the same networks trained with the IWAE bound, K=5, batch 128.
- ``iwae-paper``: Burda et al. (2016)'s sizes 784-200-200-50, the IWAE bound with K=50,
  batch 20, Adam 1e-3 decayed by 0.99 per epoch. ``--particles`` overrides K.

Training stops after the epoch that passes --minutes; then the whole test set (10,000 points)
is evaluated with K=5000 importance samples from the encoder. Anchors (Burda et al. 2016,
Table 1, one stochastic layer): VAE -86.76, IWAE (K=50) -84.78 nats, after 3,280 epochs.

    python benchmarks/bench_loglik.py --data-dir ../shared/data --recipe mnist-elbo --minutes 60
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, data_dir, log, machine, write_results  # noqa: E402

from pyrovae import runs  # noqa: E402
from pyrovae.config import PRESETS, FitConfig  # noqa: E402
from pyrovae.evaluate import estimate_log_likelihood  # noqa: E402
from pyrovae.train import fit, load_run  # noqa: E402

ANCHORS = {"mnist-elbo": -86.76, "mnist-iwae": -84.78, "iwae-paper": -84.78}


def plot_elbo_against_minutes(metrics: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    minutes, elapsed = [], 0.0
    for record in metrics:
        elapsed += record["train_seconds"] + record["eval_seconds"]
        minutes.append(elapsed / 60)
    figure, axes = plt.subplots(figsize=(6, 4))
    axes.plot(minutes, [m["test_elbo"] for m in metrics], label="test ELBO")
    axes.plot(minutes, [m["train_elbo"] for m in metrics], label="train ELBO", alpha=0.6)
    axes.set_xlabel("minutes of training")
    axes.set_ylabel("nats per image")
    axes.set_ylim(max(-130, min(m["test_elbo"] for m in metrics) - 1), None)
    axes.legend()
    axes.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--recipe", choices=sorted(PRESETS), default="mnist-elbo")
    parser.add_argument("--minutes", type=float, default=60.0, help="Training budget.")
    parser.add_argument("--epochs", type=int, default=3280, help="At most this many epochs.")
    parser.add_argument("--particles", type=int, default=None, help="Override the recipe's K.")
    parser.add_argument("--k", type=int, default=5000, help="Importance samples for log p(x).")
    parser.add_argument("--limit", type=int, default=None, help="Evaluate only the first LIMIT test points.")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice).")
    parser.add_argument("--run-dir", default=None, help="Default: benchmarks/runs/<recipe>.")
    parser.add_argument("--evaluate-only", action="store_true", help="Skip training; evaluate --run-dir.")
    args = parser.parse_args()
    root = data_dir(args.data_dir)
    if root is None:
        log("MNIST not found: pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
        sys.exit(2)
    if args.threads:
        torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir or Path(__file__).resolve().parent / "runs" / args.recipe)
    recipe = dict(PRESETS[args.recipe], data_dir=root, epochs=args.epochs, minutes=args.minutes)
    if args.particles:
        recipe["particles"] = args.particles
    started = time.perf_counter()
    if not args.evaluate_only:
        fit(FitConfig(**recipe), run_dir, overwrite=True, progress=False)
    train_minutes = (time.perf_counter() - started) / 60
    metrics = runs.read_jsonl(run_dir / runs.METRICS)
    run = load_run(run_dir, "cpu", root)
    started = time.perf_counter()
    result = estimate_log_likelihood(run.vae, run.data.test[:args.limit], k=args.k, seed=0, progress=True)
    summary = result.summary()
    RESULTS.mkdir(exist_ok=True)
    plot = RESULTS / f"loglik_{args.recipe}.png"
    plot_elbo_against_minutes(metrics, plot, f"{args.recipe}: test ELBO against minutes")
    results = {
        "machine": machine(), "command": " ".join(sys.argv), "recipe": args.recipe,
        "config": FitConfig(**recipe).to_dict(), "epochs": len(metrics),
        "train_minutes": train_minutes, "eval_minutes": (time.perf_counter() - started) / 60,
        "test_log_likelihood": summary["log_likelihood"], "test_log_likelihood_se": summary["log_likelihood_se"],
        "test_elbo": summary["elbo"], "iwae_bounds": summary["iwae_bounds"], "k": summary["k"], "n": summary["n"],
        "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"], "khat_frac_gt_0_5": summary["khat_frac_gt_0_5"],
        "active_units": summary["active_units"], "anchor": ANCHORS[args.recipe], "plot": str(plot)}
    table = "\n".join([
        f"Recipe `{args.recipe}`: {len(metrics)} epochs in {train_minutes:.1f} minutes of training.", "",
        "| test log p(x) | SE | test ELBO | K | n | k-hat > 0.7 | active units | eval minutes | anchor |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {results['test_log_likelihood']:.2f} | {results['test_log_likelihood_se']:.2f} | {results['test_elbo']:.2f} "
        f"| {results['k']} | {results['n']} | {results['khat_frac_gt_0_7']:.1%} | {results['active_units']} "
        f"| {results['eval_minutes']:.1f} | {results['anchor']} |"])
    write_results(f"loglik_{args.recipe}", results, table)


if __name__ == "__main__":
    main()
