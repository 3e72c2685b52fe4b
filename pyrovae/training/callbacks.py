"""What happens around the SVI steps of :class:`~pyrovae.training.loop.Trainer`, one callback each."""
from __future__ import annotations

import threading

import pyro
import torch

from ..core.noise import bernoulli
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
    draws overwrite (the previous epoch's data are read by nothing once its epoch has ended).

    On the CPU the next epoch's uniforms are drawn while this epoch trains, in a thread (the
    second core idles through most of a step's Python; MNIST's 47M uniforms take about 0.25 s of
    a 4 s epoch), from a copy of the generator in the state the next epoch will find it in, once
    this epoch's permutation is drawn. The next epoch takes them only if the generator is indeed
    in that state, and then leaves it as drawing would have: the draws are those of drawing at
    the epoch's start, whichever way they were made (a resumed run's first epoch draws them then)."""

    def __init__(self, prefetch: bool = True):
        self.prefetch = prefetch
        self.buffer: torch.Tensor | None = None   # this epoch's data
        self.spare: torch.Tensor | None = None    # where the next epoch's uniforms go
        self.pending: _Uniforms | None = None

    def on_epoch_start(self, trainer: Trainer) -> None:
        x, *rest = trainer.train
        drawn, self.pending = self.pending and self.pending.take(trainer.generator, x), None
        if drawn is not None:   # the uniforms of u < p, drawn ahead from this very generator state
            self.spare, self.buffer = self.buffer, drawn.lt_(x)
        else:
            self.buffer = _like(self.buffer, x)
            bernoulli(x, trainer.generator, out=self.buffer)
        trainer.epoch_data = (self.buffer, *rest)

    def before_step(self, trainer: Trainer, index: torch.Tensor, batch: Batch) -> None:
        x = trainer.train[0]
        if (self.prefetch and self.pending is None and x.device.type == "cpu" and trainer.epoch + 1 < trainer.epochs):
            self.spare = _like(self.spare, x)   # the permutation is drawn: the generator is as the next epoch finds it
            self.pending = _Uniforms(trainer.generator, self.spare)

    def on_interrupt(self, trainer: Trainer) -> None:
        self._drop()

    def on_fit_end(self, trainer: Trainer) -> None:
        self._drop()

    def _drop(self) -> None:
        if self.pending is not None:
            self.pending.thread.join()
            self.pending = None


def _like(buffer: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """``buffer`` if it has ``x``'s shape, dtype and device, else a new one."""
    if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (x.shape, x.dtype, x.device):
        return torch.empty(x.shape, device=x.device, dtype=x.dtype)
    return buffer


class _Uniforms:
    """u ~ U(0, 1) into ``out``, drawn in a thread from a copy of ``generator`` as it is now."""

    def __init__(self, generator: torch.Generator, out: torch.Tensor):
        self.start = generator.get_state()
        self.copy = torch.Generator(device=out.device)
        self.copy.set_state(self.start)
        self.out = out
        self.thread = threading.Thread(target=self._draw, daemon=True)
        self.thread.start()

    def _draw(self) -> None:
        torch.rand(self.out.shape, generator=self.copy, out=self.out)   # one serial kernel: no OpenMP team here

    def take(self, generator: torch.Generator, x: torch.Tensor) -> torch.Tensor | None:
        """The uniforms, if ``generator`` is still where they were drawn from (and ``x`` is the
        data they were drawn for); ``generator`` then moves past them."""
        self.thread.join()
        if self.out.shape != x.shape or not torch.equal(generator.get_state(), self.start):
            return None
        generator.set_state(self.copy.get_state())
        return self.out


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


