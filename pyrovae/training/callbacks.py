"""What happens around the SVI steps of :class:`~pyrovae.training.loop.Trainer`, one callback each."""
from __future__ import annotations

import pyro
import torch

from ..core.noise import BernoulliRedraws
from ..core.programs import Batch, num_rows, rows_of
from ..core.traces import elbo_terms
from ..core.vae import VAE
from .loop import Callback, Trainer
from .step import LossModule, svi_step


class KLWarmup(Callback):
    """β of epoch e (from 0) = beta · min(1, (e + 1) / warmup): a linear ramp (Bowman et al. 2016)."""

    def __init__(self, beta: float = 1.0, warmup: int = 0):
        self.beta, self.warmup = beta, warmup

    def on_epoch_start(self, trainer: Trainer) -> None:
        trainer.beta = self.beta if self.warmup == 0 else self.beta * min(1.0, (trainer.epoch + 1) / self.warmup)


class DynamicBinarization(Callback):
    """x ~ Bernoulli(intensities) anew every epoch (the first tensor of the batch), drawn from
    the trainer's generator before the epoch's permutation, into one buffer that each epoch's
    draws overwrite (the previous epoch's data are read by nothing once its epoch has ended), the
    pixels of intensity 0 or 1 set once and never drawn (:class:`~pyrovae.core.noise.BernoulliRedraws`;
    ``skip_certain=False``: every pixel drawn, as runs trained before that resume).
    (Drawing the next epoch's in a thread during training measured 1.12x slower on 2 cores: the
    draws took the cores of the step's OpenMP threads; benchmarks/results/epoch_prefetch_rejected_amd_epyc.md.)"""

    def __init__(self, skip_certain: bool = True):
        self.skip_certain = skip_certain
        self.draws: BernoulliRedraws | None = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        x, *rest = trainer.train
        if self.draws is None or self.draws.probs is not x:
            self.draws = BernoulliRedraws(x, self.skip_certain)
        trainer.epoch_data = (self.draws(trainer.generator), *rest)


class LocalSteps(Callback):
    """Classical SVI for per-datapoint guides (Hoffman et al. 2013): before each joint step, up to
    ``steps`` steps on the batch's own rows of q with the model fixed (a row moves only when its
    batch comes up). With ``tol`` > 0 they stop once the mean objective of the last ``WINDOW``
    steps beats the previous window's by less than ``tol`` nats per point (windows, since one
    step's Monte Carlo estimate is too noisy to compare). ``taken`` counts the epoch's local steps.

    A local step is the joint step's loss (``loss``, the trainer's own :class:`LossModule`, so a
    JIT-compiled loss is reused) differentiated with respect to the rows' tables only:
    ``backward(inputs=rows)`` leaves the model's parameters without a gradient, so the
    optimizer moves neither them nor their Adam state."""

    WINDOW = 5

    def __init__(self, vae: VAE, loss: LossModule, steps: int, num_data: int, tol: float = 0.0):
        self.vae, self.loss, self.steps, self.tol, self.num_data = vae, loss, steps, tol, num_data
        self.rows = vae.row_parameters()
        self.taken = self.batches = 0

    def on_epoch_start(self, trainer: Trainer) -> None:
        self.taken = self.batches = 0

    def before_step(self, trainer: Trainer, index: torch.Tensor, batch: Batch) -> None:
        self.batches += 1
        window, previous = [], None
        beta = trainer.step_beta   # the joint step's β (a tensor under the JIT)
        key = self.loss.noise_key   # (epoch, step, positions) of the joint step
        try:
            for k in range(self.steps):
                self.loss.noise_key = (*key, k + 1)   # seeded noise: each local step draws its own
                window.append(svi_step(self.loss, trainer.optimizer, index, beta, *batch, inputs=self.rows)
                              / self.num_data)
                self.taken += 1
                if self.tol and len(window) == self.WINDOW:
                    mean = sum(window) / len(window)
                    if previous is not None and previous - mean < self.tol:
                        break
                    window, previous = [], mean
        finally:
            self.loss.noise_key = key

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        record["local_steps_per_batch"] = round(self.taken / max(1, self.batches), 3)


@torch.no_grad()
def evaluate_elbo(vae: VAE, data: Batch, batch_size: int = 5000, indexed: bool = False) -> dict[str, float]:
    """Mean per-datapoint ELBO (β = 1) of ``data`` and its two terms, in nats. ``indexed``: the
    rows are the guide's own rows 0..n-1 (a per-datapoint guide on training points)."""
    model, guide = vae.bound()
    n = num_rows(data)
    recon_sum = kl_sum = 0.0
    for start in range(0, n, batch_size):
        rows = range(start, min(start + batch_size, n))
        index = torch.arange(rows.start, rows.stop, device=data[0].device) if indexed else None
        # the first training step has validated the programs: checks here would only cost time
        with pyro.validation_enabled(False):
            terms = elbo_terms(model, guide, index, 1.0, *rows_of(data, rows))
        recon_sum += terms.reconstruction.sum().item()
        kl_sum += terms.kl.sum().item()
    return {"elbo": (recon_sum - kl_sum) / n, "reconstruction": recon_sum / n, "kl": kl_sum / n}


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "data": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    # RNG states are CPU byte tensors, wherever the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["data"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class TimeBudget(Callback):
    """Stop after the epoch that passes ``minutes`` of the run's clock (0: no budget):
    :meth:`Trainer.elapsed`, which a resumed run starts at the seconds its earlier epochs took,
    so ``--minutes`` is the whole run's budget, as ``--epochs`` is its total."""

    def __init__(self, minutes: float):
        self.minutes = minutes

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.minutes and trainer.elapsed() > 60 * self.minutes \
                and trainer.epoch + 1 < trainer.epochs:
            trainer.stop(f"time budget of {self.minutes} minutes used after epoch {trainer.epoch + 1}")


