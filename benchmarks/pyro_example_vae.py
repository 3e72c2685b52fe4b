"""A VAE on MNIST as a Pyro user writes it today: the loop of Pyro's ``examples/vae/vae.py``.

The second speed reference of pyrovae's `fit` (the first is the plain PyTorch loop,
benchmarks/plain_vae.py). It imports nothing from pyrovae. In the style of Pyro's example:

    an Encoder and a Decoder nn.Module; a VAE nn.Module whose ``model`` and ``guide`` methods
    register them with ``pyro.module`` and sample inside ``pyro.plate("data", batch)``;
    SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), loss=JitTrace_ELBO());
    svi.step(x) on each batch, svi.evaluate_loss(x) over the test set after every epoch.

As in the example the loss is the batch's sum, -Σ_i ELBO_i, without the N/B scale (Adam's
steps do not depend on a constant factor of the gradient, up to its eps). The network and the
data are those of the other two peers, so that the three loops do the same arithmetic and
differ only in how it is driven: encoder 784-400-(50 loc, 50 scale), ReLU,
scale = softplus(raw) + 1e-4; decoder 50-400-784, ReLU, Bernoulli logits (the example's Softplus
hidden units and sigmoid means cost about the same); MNIST in memory, batch 128,
torch.randperm shuffling and torch.bernoulli binarization on each batch from a torch.Generator
seeded by --seed; the test images binarized once by the seed, evaluated in batches of 1000.

    python benchmarks/pyro_example_vae.py --data-dir ../shared/data --epochs 3 [--seed 0] [--threads 2]
                                          [--limit 2000] [--no-jit]

One JSON object on stdout (the keys of plain_vae.py's), progress on stderr.
"""
from __future__ import annotations

import json
import time

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from plain_vae import arguments, checked, load_mnist, summary, timed_epochs
from pyro.infer import SVI, JitTrace_ELBO, Trace_ELBO
from pyro.optim import Adam
from torch import nn


class Encoder(nn.Module):
    """x -> (loc, scale) of q(z | x)."""

    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden = nn.Linear(784, hidden_dim)
        self.loc = nn.Linear(hidden_dim, z_dim)
        self.raw_scale = nn.Linear(hidden_dim, z_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = F.relu(self.hidden(x.reshape(-1, 784)))
        return self.loc(h), F.softplus(self.raw_scale(h)) + 1e-4


class Decoder(nn.Module):
    """z -> the Bernoulli logits of x's 784 pixels."""

    def __init__(self, z_dim: int, hidden_dim: int):
        super().__init__()
        self.hidden = nn.Linear(z_dim, hidden_dim)
        self.logits = nn.Linear(hidden_dim, 784)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.logits(F.relu(self.hidden(z)))


class VAE(nn.Module):
    def __init__(self, z_dim: int = 50, hidden_dim: int = 400):
        super().__init__()
        self.encoder, self.decoder = Encoder(z_dim, hidden_dim), Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x: torch.Tensor) -> None:
        """p(z) p(x | z): z ~ N(0, I), x ~ Bernoulli(logits = decoder(z))."""
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, torch.ones_like(z_loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(logits=self.decoder(z), validate_args=False).to_event(1),
                        obs=x.reshape(-1, 784))

    def guide(self, x: torch.Tensor) -> None:
        """q(z | x) = N(encoder(x))."""
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def train_epoch(svi: SVI, intensities: torch.Tensor, generator: torch.Generator, batch_size: int = 128) -> float:
    """One epoch of svi.step; returns the mean training loss, -ELBO in nats per point."""
    n = len(intensities)
    order = torch.randperm(n, generator=generator)
    total = 0.0
    for start in range(0, n, batch_size):
        x = torch.bernoulli(intensities[order[start:start + batch_size]], generator=generator)
        total += svi.step(x)
    return total / n


def test_elbo(svi: SVI, x_test: torch.Tensor, batch_size: int = 1000) -> float:
    return -sum(svi.evaluate_loss(x_test[i:i + batch_size]) for i in range(0, len(x_test), batch_size)) / len(x_test)


def run(data_dir: str, epochs: int = 3, seed: int = 0, threads: int | None = None, limit: int | None = None,
        jit: bool = True, batch_size: int = 128) -> dict:
    started = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    train, test = load_mnist(data_dir, True)[:limit], load_mnist(data_dir, False)
    x_test = torch.bernoulli(test, generator=torch.Generator().manual_seed(seed))   # fixed once
    generator = torch.Generator().manual_seed(seed)
    pyro.set_rng_seed(seed)   # weights and the guide's draws
    pyro.clear_param_store()
    vae = VAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=JitTrace_ELBO() if jit else Trace_ELBO())
    setup_seconds = time.perf_counter() - started
    records, total = timed_epochs(epochs, lambda: train_epoch(svi, train, generator, batch_size), lambda: test_elbo(svi, x_test))
    return {"jit": jit, "seed": seed, "epochs": epochs, "batch_size": batch_size, "train_points": len(train), "test_points": len(x_test),
            "pyro": pyro.__version__, **summary(records, total, setup_seconds, started)}


def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--no-jit", dest="jit", action="store_false", help="Trace_ELBO instead of JitTrace_ELBO")
    args = checked(parser)
    print(json.dumps(run(args.data_dir, args.epochs, args.seed, args.threads, args.limit, args.jit,
                         batch_size=args.batch_size)), flush=True)


if __name__ == "__main__":
    main()
