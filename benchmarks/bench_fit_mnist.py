"""`pyrovae fit` on MNIST next to a hand-written PyTorch loop of the same model, in one run.

Both train the default VAE (784-400-50, Bernoulli, dynamic binarization, Adam 1e-3,
batch 128, Trace_ELBO math) for --epochs epochs from the same initial weights; the table
gives each one's test ELBO (same binarized test set) and median seconds per epoch.

    python benchmarks/bench_fit_mnist.py --data-dir ../shared/data --epochs 10
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
import handwritten  # noqa: E402
from common import data_dir, log, machine, write_results  # noqa: E402

from pyrovae.config import FitConfig, build_vae  # noqa: E402
from pyrovae.optim import make_optimizer  # noqa: E402
from pyrovae.train import fit, prepare_data  # noqa: E402


def epoch_comparison(root: str, epochs: int, batch_size: int = 128) -> dict:
    config = FitConfig(dataset="mnist", data_dir=root, epochs=epochs, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        result = fit(config, Path(tmp) / "run", progress=False)
        pyro_wall = time.perf_counter() - started
    log(f"pyrovae: test ELBO {result['test_elbo']:.2f}, {result['seconds_per_epoch']:.2f} s/epoch")
    data = prepare_data(config, torch.device("cpu"))   # the same test binarization as the run
    torch.manual_seed(config.seed)
    vae = build_vae(config, 784, len(data.train))
    optimizer = make_optimizer(vae, config.lr)
    generator = torch.Generator().manual_seed(config.seed)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        handwritten.train_epoch(vae, optimizer, data.train, batch_size, generator)
        seconds.append(time.perf_counter() - started)
        log(f"hand-written epoch {epoch + 1}: {seconds[-1]:.2f} s")
    hand_elbo = handwritten.test_elbo(vae, data.test)
    hand = statistics.median(seconds)   # as pyrovae's seconds_per_epoch
    return {"epochs": epochs, "batch_size": batch_size, "pyrovae_test_elbo": result["test_elbo"],
            "hand_test_elbo": hand_elbo, "pyrovae_s_per_epoch": result["seconds_per_epoch"],
            "hand_s_per_epoch": hand, "ratio": result["seconds_per_epoch"] / hand, "pyrovae_fit_wall_s": pyro_wall}


def epoch_table(e: dict) -> list[str]:
    return [f"| MNIST, {e['epochs']} epochs, batch {e['batch_size']} | test ELBO | s / epoch (median) |",
            "|---|---|---|",
            f"| pyrovae fit | {e['pyrovae_test_elbo']:.2f} | {e['pyrovae_s_per_epoch']:.2f} |",
            f"| hand-written PyTorch | {e['hand_test_elbo']:.2f} | {e['hand_s_per_epoch']:.2f} |",
            f"| ratio | | {e['ratio']:.2f} |"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    root = data_dir(args.data_dir)
    if root is None:
        log("MNIST not found: pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
        sys.exit(2)
    results = {"machine": machine(), "fit": epoch_comparison(root, args.epochs), "command": " ".join(sys.argv)}
    write_results("fit_mnist", results, "\n".join(epoch_table(results["fit"])))


if __name__ == "__main__":
    main()
