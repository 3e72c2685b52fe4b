"""Learning-rate schedules: one callback each, chosen by name (``--lr-schedule``) from
:data:`LR_SCHEDULES`; a new schedule is a class here with a ``from_options`` and one registry line.

``exponential``: lr_e = lr · decay^e for epoch e (from 0), a function of the epoch alone.

``burda``: Burda et al.'s schedule, compressed onto a run's budget.

Burda, Grosse & Salakhutdinov (2016, section 5; yburda/iwae experiments.py) train in 8 stages
i = 0..7: stage i runs 3^i epochs at lr_i = 1e-4 · round(10^(1 − i/7), 1), i.e. 1e-3, 7.2e-4,
5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4 (3,280 epochs in all). Here lr_i = lr ·
round(10^(1 − i/7), 1) / 10 (theirs at ``--lr 1e-3``), and the stages keep their shares of the
budget: stage i holds the fraction 3^i / 3280 of it, so it ends at progress

    p_i = (3^(i+1) − 1) / (3^8 − 1)      (p_6 = 1/3: the last stage is the last two thirds).

An epoch takes the lr of the stage its start falls in, its progress p = e / E for epoch e (from
0) of ``--epochs`` E, or, with ``--minutes`` T, max(e / E, t / T), t the wall time trained so far
(whichever budget ends first). With epochs alone the lr is a function of the epoch (a resumed
run needs no state); with minutes it follows the run's clock, :meth:`Trainer.elapsed`, the one
the time budget reads (a resumed run counts the seconds its earlier epochs took). A budget of a few hundred
epochs passes the first stages (121 of Burda's 3,280 epochs, 3.7%) within a few epochs: what it
keeps is the shape, most of the time at the small rates.
"""
from __future__ import annotations

from typing import Protocol

from .loop import Callback, Trainer

STAGES = 8
TOTAL = (3 ** STAGES - 1) // 2   # 3,280 epochs in Burda et al.'s schedule


def burda_stage(progress: float) -> int:
    """The stage (0..7) of the schedule at ``progress`` in [0, 1] of the budget."""
    done = progress * TOTAL   # in Burda et al.'s epochs
    stage, end = 0, 1
    while stage < STAGES - 1 and done >= end:
        stage += 1
        end += 3 ** stage
    return stage


def burda_factor(stage: int) -> float:
    """lr_i / lr_0 = round(10^(1 − i/7), 1) / 10, as their code rounds it."""
    return round(10 ** (1 - stage / (STAGES - 1)), 1) / 10


class ScheduleOptions(Protocol):
    """What a schedule reads of the training options."""
    epochs: int
    minutes: float
    lr_decay: float


class LRDecay(Callback):
    """lr of epoch e = initial lr · decay^e, per parameter group: a function of the epoch alone,
    so a resumed run needs no state for it."""

    reads_lr_decay = True

    def __init__(self, decay: float = 1.0):
        self.decay = decay

    @classmethod
    def from_options(cls, options: ScheduleOptions) -> "LRDecay":
        return cls(options.lr_decay)

    def on_epoch_start(self, trainer: Trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * self.decay ** trainer.epoch


class BurdaSchedule(Callback):
    """Sets each epoch's learning rate to initial lr · :func:`burda_factor` of its stage, per
    parameter group."""

    reads_lr_decay = False   # it sets every epoch's rate itself

    def __init__(self, epochs: int, minutes: float = 0.0):
        self.epochs, self.minutes = epochs, minutes

    @classmethod
    def from_options(cls, options: ScheduleOptions) -> "BurdaSchedule":
        return cls(options.epochs, options.minutes)

    def progress(self, trainer: Trainer) -> float:
        by_epochs = trainer.epoch / self.epochs
        if not self.minutes:
            return by_epochs
        return max(by_epochs, trainer.elapsed() / (60 * self.minutes))

    def on_epoch_start(self, trainer: Trainer) -> None:
        # rank 0's clock on every process of a distributed run: they step with one learning rate
        progress = trainer.context.broadcast(self.progress(trainer)) if self.minutes else self.progress(trainer)
        factor = burda_factor(burda_stage(progress))
        for group in trainer.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


LR_SCHEDULES: dict[str, type[LRDecay] | type[BurdaSchedule]] = {
    "exponential": LRDecay,
    "burda": BurdaSchedule,
}


def lr_schedule(name: str, options: ScheduleOptions) -> Callback:
    """The callback of the schedule called ``name``, built from the training options."""
    return LR_SCHEDULES[name].from_options(options)
