"""`pyrovae fit` on MNIST next to the plain PyTorch loop (benchmarks/plain_vae.py), in one process.

Both train the default VAE (784-400-50, Bernoulli, dynamic binarization, Adam 1e-3, batch 128,
Trace_ELBO math; pyrovae with its default JIT objective unless --no-jit) for --epochs epochs
from the same seed, through their Python entry points: ``pyrovae.training.fit`` and
``plain_vae.run``. Both report the test ELBO on the same test images (pyrovae's binarization of
the test set, by the seed, handed to plain_vae.run) after the last epoch, closed-form KL and one
sample per image. Seconds per epoch, medians over epochs:

- training only: pyrovae's metrics.jsonl ``train_seconds`` (= fit's ``seconds_per_epoch``),
  the plain loop's ``train_seconds``;
- with the per-epoch evaluation a user waits for: pyrovae adds ``eval_seconds`` (train ELBO on
  10,000 points and test ELBO; its checkpoint and pictures are not counted), the plain loop
  its test ELBO.

The two runs take turns on the machine, one after the other; benchmarks/bench_epoch.py repeats
them in fresh processes in alternating order, for timings to quote.

    python benchmarks/bench_fit_mnist.py --data-dir ../shared/data --epochs 10 [--seed 0]
        [--limit N] [--threads N] [--no-jit] [--results DIR]

Smoke run: ``--epochs 1 --limit 2000 --results /tmp/bench``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plain_vae  # noqa: E402
from common import log, machine, mnist, require_data_dir, write_results  # noqa: E402

from pyrovae import runs  # noqa: E402
from pyrovae.config import FitConfig  # noqa: E402
from pyrovae.workflows import fit, prepare_data  # noqa: E402


def epoch_comparison(root: str, epochs: int, limit: int | None = None, seed: int = 0, jit: bool = True) -> dict:
    """Train both for ``epochs`` epochs (on the first ``limit`` training points); their test ELBOs
    and seconds per epoch."""
    config = FitConfig(dataset="mnist", data_dir=root, epochs=epochs, seed=seed, jit=jit)
    dataset = mnist(root, limit)
    x_test = prepare_data(config, torch.device("cpu"), dataset).test[0]   # what fit evaluates on
    log(f"plain PyTorch loop, {epochs} epochs ...")
    plain = plain_vae.run(root, epochs, seed, None, limit, "trace", x_test=x_test)
    log(f"pyrovae fit, {epochs} epochs ...")
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = fit(config, Path(tmp) / "run", progress=False, data=dataset)
        wall = time.perf_counter() - started
        metrics = runs.read_jsonl(Path(tmp) / "run" / runs.METRICS)
    log(f"pyrovae: test ELBO {result['test_elbo']:.2f}, {result['seconds_per_epoch']:.2f} s/epoch; "
        f"plain: {plain['test_elbo']:.2f}, {plain['median_train_seconds']:.2f} s/epoch")
    pyro_train = result["seconds_per_epoch"]
    pyro_epoch = statistics.median(m["train_seconds"] + m["eval_seconds"] for m in metrics)
    return {"epochs": epochs, "batch_size": config.batch_size, "train_points": len(dataset.train),
            "test_points": len(x_test), "seed": seed, "jit": config.jit,
            "pyrovae_test_elbo": result["test_elbo"], "plain_test_elbo": plain["test_elbo"],
            "pyrovae_s_per_epoch": pyro_train, "plain_s_per_epoch": plain["median_train_seconds"],
            "ratio": pyro_train / plain["median_train_seconds"],
            "pyrovae_s_per_epoch_with_eval": pyro_epoch, "plain_s_per_epoch_with_eval": plain["median_epoch_seconds"],
            "ratio_with_eval": pyro_epoch / plain["median_epoch_seconds"],
            "pyrovae_fit_wall_s": round(wall, 3), "plain_run_wall_s": plain["seconds"],
            "pyrovae_per_epoch": metrics, "plain_per_epoch": plain["per_epoch"]}


def epoch_table(e: dict) -> list[str]:
    points = "" if e["train_points"] == 60_000 else f", {e['train_points']:,} training points"
    return [f"| MNIST, {e['epochs']} epochs, batch {e['batch_size']}{points} | test ELBO | s / epoch, training "
            "(median) | s / epoch, with evaluation (median) |",
            "|---|---|---|---|",
            f"| pyrovae fit{'' if e['jit'] else ' --no-jit'} | {e['pyrovae_test_elbo']:.2f} "
            f"| {e['pyrovae_s_per_epoch']:.2f} | {e['pyrovae_s_per_epoch_with_eval']:.2f} |",
            f"| plain PyTorch (plain_vae.py) | {e['plain_test_elbo']:.2f} | {e['plain_s_per_epoch']:.2f} "
            f"| {e['plain_s_per_epoch_with_eval']:.2f} |",
            f"| ratio pyrovae / plain | | {e['ratio']:.2f} | {e['ratio_with_eval']:.2f} |",
            "",
            f"Test ELBO of the same {e['test_points']:,} binarized test images, closed-form KL, one sample. "
            "With evaluation: pyrovae's train ELBO (10,000 points) and test ELBO after each epoch; the plain "
            "loop's test ELBO."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, default=None, help="Train on the first N training points only.")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="pyrovae fit --no-jit.")
    parser.add_argument("--results", default=None, help="Folder for fit_mnist.{json,md} (default benchmarks/results).")
    args = parser.parse_args()
    root = require_data_dir(args.data_dir)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"machine": machine(), "fit": epoch_comparison(root, args.epochs, args.limit, args.seed, args.jit),
               "command": " ".join(["python", *sys.argv])}
    write_results("fit_mnist", results, "\n".join(epoch_table(results["fit"])), args.results)


if __name__ == "__main__":
    main()
