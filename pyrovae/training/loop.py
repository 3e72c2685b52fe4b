"""The training loop: epochs of minibatch SVI, and callbacks for everything else.

Each epoch draws a permutation of the training rows from the trainer's generator, and for each
batch of rows takes one SVI step (:func:`~pyrovae.training.step.svi_step`). KL warm-up, the
learning-rate schedule, dynamic binarization, mean-field local steps, metrics, checkpoints,
pictures and the time budget are callbacks (:mod:`.callbacks`): new behaviour is a new callback.
SIGINT/SIGTERM finish the current step; the callbacks save what they must (``on_interrupt``)
and :class:`TrainingInterrupted` is raised. After the last epoch, a signal stops the pictures
(``on_fit_end``) between two of them: the checkpoint is already saved.
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable, Sequence, TypeVar

import pyro
import torch
from tqdm.auto import tqdm

from ..core import interrupts
from ..core.distributed import Context
from ..core.errors import Interrupted
from ..core.interrupts import Abandon, StopFlag
from ..core.programs import Batch, num_rows, rows_of
from ..core.vae import VAE
from .step import LossModule, svi_step


class TrainingInterrupted(Interrupted):
    """Raised after SIGINT/SIGTERM once the callbacks have checkpointed; or, with ``during``, when
    a signal stopped what follows the training (the checkpoint of ``epoch`` epochs is saved)."""

    def __init__(self, signum: int, epoch: int, step: int, during: str | None = None):
        if during is None:
            message = f"stopped by signal {signum} at epoch {epoch + 1}, step {step}; checkpoint written"
        else:
            message = f"stopped by signal {signum} while {during}; the checkpoint of epoch {epoch} is saved"
        super().__init__(message)
        self.signum, self.epoch, self.step, self.during = signum, epoch, step, during


T = TypeVar("T")


def after_training(work: Callable[[], T], during: str, epochs: int) -> T:
    """``work()`` (after the last checkpoint) under a :class:`StopFlag`: a signal drops it at its
    next :func:`pyrovae.interrupts.check` (or, arriving after the last one, once it returns) and
    raises :class:`TrainingInterrupted` saying what was under way."""
    with StopFlag():
        try:
            result = work()
        except Abandon:
            result = None
        signum = interrupts.received()   # this flag's, or an enclosing one's (e.g. during the last epoch's end)
        if signum is not None:
            raise TrainingInterrupted(signum, epochs, 0, during)
    return result


class NonFiniteLoss(Exception):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


class Callback:
    """Hooks of the loop; each receives the :class:`Trainer`. Override what you need."""

    def on_fit_start(self, trainer: "Trainer") -> None: ...
    def on_epoch_start(self, trainer: "Trainer") -> None: ...
    def before_step(self, trainer: "Trainer", index: torch.Tensor, batch: Batch) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...
    def on_interrupt(self, trainer: "Trainer") -> None: ...
    def on_fit_end(self, trainer: "Trainer") -> None: ...


class Trainer:
    """SVI on ``train`` (a batch of tensors, rows first) for ``epochs`` epochs.

    State the callbacks read and set: ``epoch`` (from 0), ``step`` (within the epoch), ``beta``
    (the KL coefficient of this epoch), ``epoch_data`` (the training tensors as this epoch sees
    them, until the next epoch starts: dynamic binarization rewrites one buffer), ``loss_sum``/``seen``
    (the epoch's running objective), ``stop_reason``. ``seconds_before``: the seconds a resumed
    run's earlier epochs took, where the run's clock (:meth:`elapsed`) starts.
    """

    def __init__(self, vae: VAE, loss: LossModule, optimizer: torch.optim.Optimizer, train: Batch, *,
                 batch_size: int, epochs: int, generator: torch.Generator, callbacks: Sequence[Callback] = (),
                 progress: bool = True, beta_as_tensor: bool = False, context: Context | None = None,
                 step_loss: torch.nn.Module | None = None):
        """``loss`` is the run's :class:`~pyrovae.training.step.LossModule`; ``step_loss`` what a step
        calls, if not ``loss`` itself (DistributedDataParallel around it)."""
        self.vae, self.loss_module, self.optimizer, self.train = vae, loss, optimizer, tuple(train)
        self.loss = loss if step_loss is None else step_loss
        self.context = context or Context()
        self.batch_size, self.epochs, self.generator = batch_size, epochs, generator
        self.callbacks, self.progress, self.beta_as_tensor = list(callbacks), progress, beta_as_tensor
        self.device = train[0].device
        self.epoch, self.step, self.beta = 0, 0, 1.0
        self.step_beta: float | torch.Tensor = 1.0   # the epoch's β as a step passes it (a tensor under the JIT)
        self.epochs_done = 0   # in the checkpoint
        self.epoch_data: tuple[torch.Tensor, ...] = self.train
        self.epoch_rng = generator.get_state()
        self.loss_sum, self.seen = 0.0, 0
        self.train_seconds = self.fit_end_seconds = 0.0
        self.seconds_before, self.fit_started = 0.0, time.perf_counter()
        self.stop_reason: str | None = None
        self.validated = False
        self._agreed_signal: int | None = None

    @property
    def num_data(self) -> int:
        return num_rows(self.train)

    def elapsed(self) -> float:
        """The run's clock, in seconds: what earlier processes of a resumed run trained
        (``seconds_before``) plus the wall time since this process's :meth:`run` began. The time
        budget and clock-driven schedules read it; each process reads its own."""
        return self.seconds_before + time.perf_counter() - self.fit_started

    def stop(self, reason: str) -> None:
        """Stop after this epoch (a callback's request)."""
        self.stop_reason = reason

    def run(self, start_epoch: int = 0, start_step: int = 0, partial: tuple[float, int] = (0.0, 0)) -> None:
        self.fit_started = time.perf_counter()
        for cb in self.callbacks:
            cb.on_fit_start(self)
        self.epochs_done = start_epoch
        with StopFlag() as flag:
            for epoch in range(start_epoch, self.epochs):
                resumed = epoch == start_epoch
                self._epoch(epoch, start_step if resumed else 0, partial if resumed else (0.0, 0), flag)
                self.epochs_done = epoch + 1
                if self.stop_reason:
                    break
            started = time.perf_counter()   # inside the flag: a signal at the last epoch's end stops the pictures
            after_training(self._fit_end, "drawing the end-of-training pictures", self.epochs_done)
            self.fit_end_seconds = time.perf_counter() - started

    def _fit_end(self) -> None:
        for cb in self.callbacks:   # pictures, curves, ...: a signal stops them between two
            interrupts.check()
            cb.on_fit_end(self)

    def _epoch(self, epoch: int, start_step: int, partial: tuple[float, int], flag: StopFlag) -> None:
        self.epoch, self.epoch_data = epoch, self.train
        self.epoch_rng = self.generator.get_state()   # resuming mid-epoch replays the draws below
        for cb in self.callbacks:   # e.g. binarization draws from the generator, before the permutation
            cb.on_epoch_start(self)
        n = self.num_data
        order = torch.randperm(n, generator=self.generator, device=self.device)
        beta = torch.tensor(self.beta, device=self.device) if self.beta_as_tensor else self.beta
        self.step_beta = beta   # the β that callbacks which step pass on
        self.loss_sum, self.seen = partial
        batches = range(0, n, self.batch_size)
        started = time.perf_counter()
        context = self.context
        bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{self.epochs}",
                   disable=not (self.progress and context.is_main), file=sys.stderr, leave=False)
        agree = self._agree(flag) if context.active else None
        for step, start in enumerate(batches):
            if step < start_step:
                continue
            positions = context.share(0, len(range(start, min(start + self.batch_size, n))))
            index = order[start + positions.start:start + positions.stop]   # this rank's share of the batch
            batch = rows_of(self.epoch_data, index)
            self.step = step
            self.loss_module.noise_key = (epoch, step, positions)
            try:
                # Pyro's validation checks supports and shapes on the first step; then it only costs time
                with pyro.validation_enabled(not self.validated):
                    for cb in self.callbacks:
                        cb.before_step(self, index, batch)
                    loss = svi_step(self.loss, self.optimizer, index, beta, *batch, agree=agree)
                self.validated = True
            except FloatingPointError as error:
                bar.close()
                raise NonFiniteLoss(f"the loss became {error} at epoch {epoch + 1}, step {step + 1}") from None
            self.loss_sum += loss * len(index) / n   # loss / (n / rows) = the rows' sum
            self.seen += len(index)
            bar.set_postfix(loss=f"{loss / n:.2f}", refresh=False)
            bar.update()
            # processes stop on the signal they agreed on before this step's gradient: one that
            # arrives later is shared at the next step, so no process stops alone
            stop = self._agreed_signal if context.active else flag.signal
            if stop is not None:
                bar.close()
                self.step = step + 1
                for cb in self.callbacks:
                    cb.on_interrupt(self)
                raise TrainingInterrupted(stop, epoch, step + 1)
        bar.close()
        self.step = len(batches)
        self.train_seconds = time.perf_counter() - started
        loss_sum, seen = context.total(self.loss_sum), context.total(self.seen)   # every rank's rows
        record = {"epoch": epoch + 1, "beta": self.beta, "lr": self.optimizer.param_groups[0]["lr"],
                  "train_objective": -loss_sum / max(seen, 1), "train_seconds": round(self.train_seconds, 4)}
        for cb in self.callbacks:
            cb.on_epoch_end(self, record)
        if context.active and context.any(self.stop_reason is not None) and not self.stop_reason:
            self.stop_reason = "another process stopped"   # e.g. its time budget: all stop together

    def _agree(self, flag: StopFlag):
        """Between each step's loss and its gradient: every rank learns whether any rank's loss is
        not finite (all raise) or any rank got a signal (all finish the step and stop)."""
        def agree(value: float) -> None:
            nonfinite, signal = self.context.flags([0.0 if math.isfinite(value) else 1.0,
                                                    0.0 if flag.signal is None else float(flag.signal)])
            if nonfinite:
                raise FloatingPointError("not finite on a process" if math.isfinite(value) else str(value))
            self._agreed_signal = int(signal) if signal else None
        return agree
