"""The convolutional VAE against the MLP VAE on MNIST at equal minutes of training.

Both train with the ELBO (Trace_ELBO, an amortized Gaussian guide, Bernoulli pixels with dynamic
binarization, batch 128, Adam 1e-3, 50 latent units) for --minutes each, one after the other in
this process (the load is recorded at the start; nothing else may run beside it: run it under
the machine's benchmark lock). The MLP is pyrovae's default 784-400-50 (encoder and decoder);
the conv model is ``--model conv`` with ``--channels`` (4x4 stride-2 convolutions, 28 -> 14 -> 7)
and the same 400-unit fully connected layer between the conv features and z. Then each model's
log p(x) on the first --limit test points, by importance sampling from its encoder with K=--k
draws (``estimate_log_likelihood``, the heap tuned as ``pyrovae evaluate`` tunes it), and the
paired difference on the same points with its SE. Seconds per epoch are each fit's median.

    flock -x /work/bench.lock python benchmarks/bench_conv.py --data-dir ../shared/data --minutes 3 --limit 300

Smoke run: ``--minutes 0.02 --train-limit 600 --limit 10 --k 50 --runs /tmp/runs --results /tmp/bench``.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine, mnist, require_data_dir, write_results  # noqa: E402

from pyrovae.config import FitConfig  # noqa: E402
from pyrovae.core import heap  # noqa: E402
from pyrovae.evaluation.importance import estimate_log_likelihood  # noqa: E402
from pyrovae.workflows import fit, load_run  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--minutes", type=float, default=3.0, help="training minutes of each model")
    parser.add_argument("--channels", default="32,64")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--limit", type=int, default=1000, help="first test points evaluated")
    parser.add_argument("--train-limit", type=int, default=None, help="first training rows (smoke runs)")
    parser.add_argument("--runs", default="/tmp/bench_conv_runs")
    parser.add_argument("--results")
    args = parser.parse_args()
    root = require_data_dir(args.data_dir)
    info = machine()   # the load average before any work
    heap.keep_freed_memory()
    dataset = mnist(root, args.train_limit)
    channels = tuple(int(c) for c in args.channels.split(","))
    models = {"mlp": dict(model="vae"), "conv": dict(model="conv", channels=channels)}
    results: dict = {"machine": info, "minutes": args.minutes, "k": args.k, "limit": args.limit,
                     "channels": list(channels), "models": {}}
    per_point = {}
    for name, family in models.items():
        config = FitConfig(dataset="mnist", data_dir=root, latent_dim=50, hidden=(400,), elbo="trace", epochs=10_000,
                           minutes=args.minutes, seed=0, device="cpu", **family)
        run_dir = Path(args.runs) / name
        log(f"training {name} for {args.minutes} minutes")
        trained = fit(config, run_dir, overwrite=True, progress=False, data=dataset)
        run = load_run(run_dir, "cpu", root, data=dataset)
        log(f"IS of {name}: K={args.k}, {args.limit} test points")
        started = time.perf_counter()
        estimate = estimate_log_likelihood(run.vae, run.data.test[0][:args.limit], k=args.k, seed=0)
        summary = estimate.summary()
        per_point[name] = torch.from_numpy(estimate.log_px)
        results["models"][name] = {
            "epochs": trained["epochs"], "seconds_per_epoch": trained["seconds_per_epoch"],
            "test_elbo_last_epoch": trained["test_elbo"], "log_likelihood": summary["log_likelihood"],
            "log_likelihood_se": summary["log_likelihood_se"], "elbo": summary["elbo"],
            "khat_frac_gt_0_7": summary["khat_frac_gt_0_7"], "is_seconds": round(time.perf_counter() - started, 1),
            "parameters": sum(p.numel() for p in run.vae.parameters())}
    difference = per_point["conv"] - per_point["mlp"]
    results["conv_minus_mlp"] = float(difference.mean())
    results["conv_minus_mlp_se"] = float(difference.std() / math.sqrt(len(difference)))
    results["seconds_per_epoch_ratio"] = (results["models"]["conv"]["seconds_per_epoch"] /
                                          results["models"]["mlp"]["seconds_per_epoch"])
    rows = ["| model | epochs in the budget | s / epoch | test ELBO (last epoch) | log p(x), IS | k-hat > 0.7 | "
            "IS seconds | parameters |", "|---|---|---|---|---|---|---|---|"]
    for name, m in results["models"].items():
        rows.append(f"| {name} | {m['epochs']} | {m['seconds_per_epoch']:.1f} | {m['test_elbo_last_epoch']:.2f} | "
                    f"{m['log_likelihood']:.2f} ± {m['log_likelihood_se']:.2f} | {m['khat_frac_gt_0_7']:.3f} | "
                    f"{m['is_seconds']:.0f} | {m['parameters']:,} |")
    rows.append(f"\nconv − MLP, paired over the same {args.limit} points: {results['conv_minus_mlp']:.2f} ± "
                f"{results['conv_minus_mlp_se']:.2f} nats; seconds per epoch, conv / MLP: "
                f"{results['seconds_per_epoch_ratio']:.1f}×. {args.minutes} minutes of training each, K={args.k}.")
    write_results("conv", results, "\n".join(rows), args.results)


if __name__ == "__main__":
    main()
