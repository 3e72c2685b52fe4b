"""A plain PyTorch VAE on MNIST, written from scratch: the loop a user would write.

The speed reference of pyrovae's `fit`. It imports nothing from pyrovae: its own modules, data
tensors and binarization. Same model and recipe as `pyrovae fit --dataset mnist`:

    encoder 784-400-(50 loc, 50 scale), ReLU, scale = softplus(raw) + 1e-4
    decoder 50-400-784, ReLU, Bernoulli logits; prior z ~ N(0, I)
    loss per batch = -(N/B) Σ_i ELBO_i, one reparameterized sample per point, with
      --elbo trace:     Monte Carlo KL, log q(z_i|x_i) - log p(z_i) at the sample (Pyro's Trace_ELBO)
      --elbo meanfield: closed-form Gaussian KL (TraceMeanField_ELBO)
    Adam lr 1e-3 (torch's default implementation), batch 128, torch.randperm shuffling and dynamic
    binarization (torch.bernoulli on each batch as it is drawn), both from a torch.Generator
    seeded by --seed.

After every epoch it computes the test ELBO (test images binarized once by the seed, closed-form
KL, one sample, batches of 1000, under torch.no_grad), as a user would. Measured per epoch: the
training seconds, the test-ELBO seconds, their sum, the mean training loss (nats per point)
and the test ELBO. One JSON object on stdout, progress on stderr.

    python benchmarks/plain_vae.py --data-dir ../shared/data --epochs 3 [--seed 0] [--threads 2]
                                   [--limit 2000] [--elbo trace|meanfield]

From Python: run(data_dir, epochs, seed, threads, limit, elbo[, x_test]) -> the same dict (x_test:
evaluate on these binary test images instead of the seed's binarization).

For one-step timings (benchmarks/bench_speed.py) the same file has the other objectives and a
mean-field guide, still without pyrovae:

    batch_bound(vae, x, elbo, particles, index): Σ_i bound_i, K reparameterized samples per point
      trace:     mean_k [log p(x_i|z_ik) + log p(z_ik) - log q(z_ik|x_i)]
      meanfield: mean_k log p(x_i|z_ik) - KL(q(z|x_i) || p(z))
      iwae:      logsumexp_k [log p(x_i, z_ik) - log q(z_ik|x_i)] - log K   (Burda et al. 2016)
    MeanFieldVAE(num_rows): free loc_i, log_scale_i per training row (initialized at N(0, I))
      and the same decoder; encode(x, index) reads the batch's rows.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LOG_2PI = math.log(2 * math.pi)


class VAE(nn.Module):
    def __init__(self, data_dim: int = 784, hidden: int = 400, latent: int = 50):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))

    def encode(self, x: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self.encoder(x).chunk(2, dim=-1)   # index: unused (an encoder needs only x)
        return loc, F.softplus(raw_scale) + 1e-4


class MeanFieldVAE(nn.Module):
    """Classical mean-field VI: a free Gaussian N(loc_i, diag exp(log_scale_i)^2) per training row
    instead of an encoder, and the same decoder. Plain tables, stepped by whatever optimizer the
    caller picks (torch.optim.Adam moves every row on every step, by its momentum)."""

    def __init__(self, num_rows: int, data_dim: int = 784, hidden: int = 400, latent: int = 50):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(num_rows, latent))
        self.log_scale = nn.Parameter(torch.zeros(num_rows, latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, data_dim))

    def encode(self, x: torch.Tensor, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if index is None:
            index = torch.arange(len(x), device=x.device)
        return self.loc[index], self.log_scale[index].exp()


def log_normal(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * LOG_2PI).sum(-1)


def batch_elbo(vae: VAE, x: torch.Tensor, kl: str = "trace") -> torch.Tensor:
    """Σ_i ELBO_i over the batch, one reparameterized sample per point."""
    loc, scale = vae.encode(x)
    z = loc + scale * torch.randn_like(loc)
    log_lik = -F.binary_cross_entropy_with_logits(vae.decoder(z), x, reduction="sum")
    if kl == "meanfield":   # KL(N(loc, scale) || N(0, I)) in closed form
        return log_lik - (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).sum()
    return log_lik + (log_normal(z, torch.zeros_like(z), torch.ones_like(z)) - log_normal(z, loc, scale)).sum()


def batch_bound(vae: nn.Module, x: torch.Tensor, elbo: str = "trace", particles: int = 1,
                index: torch.Tensor | None = None) -> torch.Tensor:
    """Σ_i bound_i over the batch with ``particles`` reparameterized samples per point, for a
    VAE or a MeanFieldVAE (``index``: the batch's rows in its tables)."""
    loc, scale = vae.encode(x, index)
    z = loc + scale * torch.randn((particles, *loc.shape), dtype=loc.dtype, device=loc.device)   # [K, B, D]
    logits = vae.decoder(z)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)   # [K, B]
    if elbo == "meanfield":
        kl = (0.5 * (loc ** 2 + scale ** 2 - 1) - scale.log()).sum(-1)
        return (log_lik.mean(0) - kl).sum()
    log_w = log_lik + log_normal(z, torch.zeros_like(z), torch.ones_like(z)) - log_normal(z, loc, scale)
    if elbo == "iwae":
        return (torch.logsumexp(log_w, 0) - math.log(particles)).sum()
    return log_w.mean(0).sum()


def train_epoch(vae, optimizer, intensities, generator, kl="trace", batch_size=128) -> float:
    """One epoch; returns the mean training loss, -ELBO in nats per point."""
    n = len(intensities)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        x = torch.bernoulli(intensities[order[start:start + batch_size]], generator=generator)   # dynamic binarization
        loss = -(n / len(x)) * batch_elbo(vae, x, kl)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(x) / n
    return total / n


@torch.no_grad()
def test_elbo(vae, x_test, batch_size=1000) -> float:
    return sum(batch_elbo(vae, x_test[i:i + batch_size], "meanfield").item()
               for i in range(0, len(x_test), batch_size)) / len(x_test)


def load_mnist(data_dir: str, train: bool) -> torch.Tensor:
    from torchvision.datasets import MNIST
    images = MNIST(data_dir, train=train, download=False).data   # uint8 [N, 28, 28]
    return images.reshape(len(images), -1).float() / 255


def timed_epochs(epochs: int, train: Callable[[], float], test: Callable[[], float]) -> tuple[list[dict], dict]:
    """``epochs`` times train() (the mean training loss) then test() (the test ELBO), timed; the
    per-epoch records (printed on stderr as they come) and the sums of their seconds."""
    records = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss = train()
        t1 = time.perf_counter()
        test_value = test()
        t2 = time.perf_counter()
        records.append({"epoch": epoch, "train_seconds": round(t1 - t0, 4), "eval_seconds": round(t2 - t1, 4),
                        "epoch_seconds": round(t2 - t0, 4), "train_loss": loss, "test_elbo": test_value})
        print(f"epoch {epoch}: train loss {loss:.2f}, test ELBO {test_value:.2f} nats "
              f"({t1 - t0:.2f} s train, {t2 - t1:.2f} s test)", file=sys.stderr, flush=True)
    total = {key: round(sum(r[key] for r in records), 4) for key in ("train_seconds", "eval_seconds", "epoch_seconds")}
    return records, total


def summary(records: list[dict], total: dict, setup_seconds: float, started: float) -> dict:
    """The keys both loops report after their own."""
    return {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "per_epoch": records, "total": total, "setup_seconds": round(setup_seconds, 4),
            "median_train_seconds": statistics.median(r["train_seconds"] for r in records) if records else None,
            "median_epoch_seconds": statistics.median(r["epoch_seconds"] for r in records) if records else None,
            "test_elbo": records[-1]["test_elbo"] if records else None,
            "seconds": round(time.perf_counter() - started, 3)}


def arguments(doc: str) -> argparse.ArgumentParser:
    """The options both loops take."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=os.environ.get("PYROVAE_DATA_DIR"),
                        help="folder holding MNIST/raw (default: $PYROVAE_DATA_DIR)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N training points")
    parser.add_argument("--batch-size", type=int, default=128, help="training rows per step")
    return parser


def checked(parser: argparse.ArgumentParser) -> argparse.Namespace:
    args = parser.parse_args()
    if not args.data_dir or not os.path.isdir(os.path.join(args.data_dir, "MNIST", "raw")):
        parser.error("pass --data-dir (or set PYROVAE_DATA_DIR) to a folder holding MNIST/raw")
    return args


def run(data_dir: str, epochs: int = 3, seed: int = 0, threads: int | None = None, limit: int | None = None,
        elbo: str = "trace", x_test: torch.Tensor | None = None, batch_size: int = 128) -> dict:
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    train, test = load_mnist(data_dir, True)[:limit], load_mnist(data_dir, False)
    if x_test is None:
        x_test = torch.bernoulli(test, generator=torch.Generator().manual_seed(seed))   # fixed once
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)   # weights and the reparameterization noise
    vae = VAE()
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-3)
    setup_seconds = time.perf_counter() - started

    def train_one() -> float:
        vae.train()
        return train_epoch(vae, optimizer, train, generator, elbo, batch_size)

    def test_one() -> float:
        vae.eval()
        return test_elbo(vae, x_test)

    records, total = timed_epochs(epochs, train_one, test_one)
    return {"elbo": elbo, "seed": seed, "epochs": epochs, "batch_size": batch_size, "train_points": len(train),
            "test_points": len(x_test),
            **summary(records, total, setup_seconds, started)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--elbo", choices=("trace", "meanfield"), default="trace")
    args = checked(parser)
    print(json.dumps(run(args.data_dir, args.epochs, args.seed, args.threads, args.limit, args.elbo,
                         batch_size=args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
