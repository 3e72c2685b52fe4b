"""Burda et al.'s learning-rate schedule, compressed onto a run's budget.

Burda, Grosse & Salakhutdinov (2016, section 5; yburda/iwae experiments.py) train in 8 stages
i = 0..7: stage i runs 3^i epochs at lr_i = 1e-4 · round(10^(1 − i/7), 1), i.e. 1e-3, 7.2e-4,
5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4 (3,280 epochs in all). Here lr_i = lr ·
round(10^(1 − i/7), 1) / 10 (theirs at ``--lr 1e-3``), and the stages keep their shares of the
budget: stage i holds the fraction 3^i / 3280 of it, so it ends at progress

    p_i = (3^(i+1) − 1) / (3^8 − 1)      (p_6 = 1/3: the last stage is the last two thirds).

An epoch takes the lr of the stage its start falls in, its progress p = e / E for epoch e (from
0) of ``--epochs`` E, or, with ``--minutes`` T, max(e / E, t / T), t the wall time trained so far
(whichever budget ends first). With epochs alone the lr is a function of the epoch (a resumed
run needs no state); with minutes it follows the clock, as the time budget does, and a resumed
run counts the seconds its earlier epochs took (``seconds_before``). A budget of a few hundred
epochs passes the first stages (121 of Burda's 3,280 epochs, 3.7%) within a few epochs: what it
keeps is the shape, most of the time at the small rates.
"""
from __future__ import annotations

import time

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


class BurdaSchedule(Callback):
    """Sets each epoch's learning rate to initial lr · :func:`burda_factor` of its stage, per
    parameter group."""

    def __init__(self, epochs: int, minutes: float = 0.0, seconds_before: float = 0.0):
        self.epochs, self.minutes, self.seconds_before = epochs, minutes, seconds_before
        self.started = time.perf_counter()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def progress(self, epoch: int) -> float:
        by_epochs = epoch / self.epochs
        if not self.minutes:
            return by_epochs
        seconds = self.seconds_before + time.perf_counter() - self.started
        return max(by_epochs, seconds / (60 * self.minutes))

    def on_epoch_start(self, trainer: Trainer) -> None:
        # rank 0's clock on every process of a distributed run: they step with one learning rate
        progress = trainer.context.broadcast(self.progress(trainer.epoch)) if self.minutes else \
            self.progress(trainer.epoch)
        factor = burda_factor(burda_stage(progress))
        for group in trainer.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor
