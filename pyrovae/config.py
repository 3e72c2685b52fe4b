"""Every option of a run, checked in one place, and the VAE it builds."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from .data import BINARIZE
from .errors import UsageError
from .guides import AmortizedGuide, MeanFieldGuide
from .model import LIKELIHOODS, VAE, Decoder, parse_sigma
from .objectives import OBJECTIVES

GUIDES = ("amortized", "meanfield")

# Named recipes: option values a preset sets unless the command line gives them.
PRESETS: dict[str, dict] = {
    # the MNIST log-likelihood recipe of benchmarks/bench_loglik.py, trained with the ELBO
    "mnist-elbo": dict(dataset="mnist", hidden=(500, 500), latent_dim=50, batch_size=128, lr=1e-3,
                       lr_decay=0.99, kl_warmup=10, elbo="meanfield"),
    # the same networks trained with the IWAE bound, K=5: more particles cost more than they gain
    # within an hour of CPU
    "mnist-iwae": dict(dataset="mnist", hidden=(500, 500), latent_dim=50, batch_size=128, lr=1e-3,
                       lr_decay=0.99, elbo="iwae", particles=5),
    # Burda et al. (2016)'s one-stochastic-layer sizes (784-200-200-50, batch 20) with the IWAE bound, K=50
    "iwae-paper": dict(dataset="mnist", hidden=(200, 200), latent_dim=50, batch_size=20, lr=1e-3,
                       lr_decay=0.99, elbo="iwae", particles=50),
}
MAX_SIZE = 100_000      # widths, latent dims and particles beyond this are typos, not models that fit in memory


def parse_hidden(text: str) -> tuple[int, ...]:
    """``--hidden``: a comma list of layer widths, e.g. ``400`` or ``500,500``; empty means linear."""
    text = text.strip()
    if text in ("", "none", "linear"):
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--hidden {text!r} is not a comma list of integers; write e.g. --hidden 400 or "
                         "--hidden 500,500 (or --hidden '' for a linear decoder)") from None
    if any(width <= 0 for width in widths):
        raise UsageError(f"--hidden {text!r} has a width <= 0; every layer needs at least one unit")
    return widths


@dataclass
class FitConfig:
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    test_fraction: float = 0.1
    likelihood: str = "bernoulli"
    sigma: str = "1.0"
    binarize: str | None = None         # default: dynamic for bernoulli, none for normal
    latent_dim: int = 50
    hidden: tuple[int, ...] = (400,)
    guide: str = "amortized"
    elbo: str = "trace"
    particles: int = 1
    jit: bool | None = None             # None: Pyro's JIT for trace and meanfield, eager for iwae
    beta: float = 1.0
    kl_warmup: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0               # lr of epoch e is lr * lr_decay ** e
    # --guide meanfield: each row of the tables is stepped only when its batch comes up, so it gets
    # its own learning rate and extra steps on its batch first (classical SVI, Hoffman et al. 2013).
    # 0.2 and 4 took mnist-sample's train ELBO from -205 (0.05, 0) to -135 in 15 epochs.
    local_lr: float = 0.2
    local_steps: int = 4
    minutes: float = 0.0                # stop after the epoch that passes this budget (0: no budget)
    seed: int = 0
    device: str = "auto"
    eval_train_points: int = 10_000     # train ELBO each epoch on this many training points

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)
        if self.binarize is None:
            self.binarize = "dynamic" if self.likelihood == "bernoulli" else "none"
        if self.jit is None:
            # the compiled loss is the fast path (benchmarks/bench_speed.py); Pyro has none for IWAE
            self.jit = self.elbo != "iwae"

    def validate(self) -> "FitConfig":
        """Raise :class:`UsageError` naming the first bad option and its fix."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        need(self.likelihood in LIKELIHOODS, f"unknown --likelihood {self.likelihood!r}; use bernoulli or normal")
        need(self.guide in GUIDES, f"unknown --guide {self.guide!r}; use amortized or meanfield")
        need(self.elbo in OBJECTIVES, f"unknown --elbo {self.elbo!r}; use trace, meanfield or iwae")
        need(self.binarize in BINARIZE, f"unknown --binarize {self.binarize!r}; use dynamic, static or none")
        need(self.likelihood == "bernoulli" or self.binarize == "none",
             f"--binarize {self.binarize} only makes sense with --likelihood bernoulli; drop it or use --binarize none")
        need(self.epochs >= 1, f"--epochs must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}")
        need(self.latent_dim >= 1, f"--latent-dim must be at least 1, got {self.latent_dim}")
        need(self.particles >= 1, f"--particles must be at least 1, got {self.particles}")
        need(self.latent_dim <= MAX_SIZE and self.particles <= MAX_SIZE,
             f"--latent-dim {self.latent_dim} / --particles {self.particles} is too large (at most {MAX_SIZE})")
        need(0 <= self.seed < 2**32, f"--seed must lie in [0, 2**32 - 1], got {self.seed}")
        need(math.isfinite(self.lr) and self.lr > 0, f"--lr must be a positive number, got {self.lr}")
        need(0 < self.lr_decay <= 1, f"--lr-decay must lie in (0, 1], got {self.lr_decay}")
        need(0 <= self.local_steps <= 1000, f"--local-steps must lie in [0, 1000], got {self.local_steps}")
        need(math.isfinite(self.local_lr) and self.local_lr > 0, f"--local-lr must be a positive number, got {self.local_lr}")
        need(math.isfinite(self.minutes) and self.minutes >= 0, f"--minutes must be >= 0 (0: no budget), got {self.minutes}")
        need(math.isfinite(self.beta) and self.beta > 0,
             f"--beta must be a number > 0 (Pyro cannot scale a site by 0), got {self.beta}")
        need(self.kl_warmup >= 0, f"--kl-warmup must be >= 0 epochs, got {self.kl_warmup}")
        need(0 < self.test_fraction < 1, f"--test-fraction must lie in (0, 1), got {self.test_fraction}")
        need(self.eval_train_points >= 1, f"eval_train_points must be at least 1, got {self.eval_train_points}")
        need(not (self.jit and self.elbo == "iwae"),
             "--jit is not available for --elbo iwae (Pyro has no JIT IWAE objective); drop --jit")
        need(all(isinstance(width, int) and width > 0 for width in self.hidden),
             f"--hidden widths must be positive integers, got {self.hidden}")
        need(all(width <= MAX_SIZE for width in self.hidden),
             f"--hidden widths must be at most {MAX_SIZE}, got {self.hidden}")
        if self.likelihood == "normal":
            try:
                parse_sigma(self.sigma)
            except ValueError:
                raise UsageError(f"--sigma {self.sigma!r} is not a positive number, 'learned' or 'learned-pixel'") from None
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FitConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


def build_vae(config: FitConfig, data_dim: int, num_train: int) -> VAE:
    """The VAE a config describes: its decoder and its guide (amortized or mean-field)."""
    decoder = Decoder(config.latent_dim, data_dim, config.hidden, config.likelihood, config.sigma)
    if config.guide == "meanfield":
        guide = MeanFieldGuide(num_train, config.latent_dim)
    else:
        guide = AmortizedGuide(data_dim, config.latent_dim, config.hidden)
    return VAE(decoder, guide)
