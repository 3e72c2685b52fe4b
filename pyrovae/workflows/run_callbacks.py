"""The callbacks of a run folder: what ``fit`` writes around the SVI steps (metrics.jsonl,
checkpoint.pt, the pictures and curves, TensorBoard event files), one callback each."""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import torch

from .. import runs
from ..core.programs import Batch, rows_of
from ..pictures.figures import training_curves
from ..pictures.plots import picture_rows, prior_samples, reconstructions, write_run_images
from ..training.callbacks import evaluate_elbo, rng_state
from ..training.loop import Callback, Trainer

CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class Metrics(Callback):
    """After each epoch: the train ELBO on the first ``train_points`` rows (as this epoch saw
    them), and the test and ``validation`` ELBOs (for a guide that can encode new points),
    appended to metrics.jsonl."""

    def __init__(self, run_dir: Path, test: Batch | None, train_points: int = 10_000,
                 log: Callable[[str], None] | None = None, validation: Batch | None = None):
        self.run_dir, self.test, self.train_points, self.validation = run_dir, test, train_points, validation
        self.log = log or logging.getLogger(__name__).info   # the epoch lines (the CLI shows them on stderr)

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        started = time.perf_counter()
        vae = trainer.vae
        train = evaluate_elbo(vae, rows_of(trainer.epoch_data, slice(0, self.train_points)),
                              indexed=vae.can("per_datapoint"))
        record.update({"train_elbo": train["elbo"], "train_reconstruction": train["reconstruction"],
                       "train_kl": train["kl"]})
        for split, rows in (("test", self.test), ("validation", self.validation)):
            if rows is not None and vae.can("amortized"):
                record.update({f"{split}_{key}": value for key, value in evaluate_elbo(vae, rows).items()})
        record["eval_seconds"] = round(time.perf_counter() - started, 4)
        runs.append_jsonl(self.run_dir / runs.METRICS, record)
        shown = "".join(f", {split} ELBO {record[split + '_elbo']:.3f}" for split in ("test", "validation")
                        if split + "_elbo" in record)
        self.log(f"epoch {record['epoch']}: train ELBO {record['train_elbo']:.3f}{shown} nats "
                 f"({record['train_seconds']:.1f} s)")


class Checkpoint(Callback):
    """checkpoint.pt after every epoch and on an interrupt (mid-epoch: the epoch's starting RNG
    state, its step and running loss, so a resumed run replays the epoch's draws and skips the
    steps it took). Written atomically: a crash leaves the previous checkpoint.

    With a validation split (the epoch's ``validation_elbo``, from :class:`Metrics` before it):
    best.pt, the same checkpoint of the first epoch with the best validation ELBO so far, written
    before checkpoint.pt, so that a crash between the two leaves a best.pt the resumed run, which
    replays that epoch, writes again. The best so far is read back from metrics.jsonl when the
    fit starts (a resumed run's, trimmed to its checkpoint). ``patience`` > 0: stop once that
    many epochs have passed without a better one (``stopped_early``)."""

    def __init__(self, run_dir: Path, patience: int = 0):
        self.run_dir, self.patience = run_dir, patience
        self.best: tuple[float, int] | None = None   # (validation ELBO, epoch) of best.pt
        self.stopped_early = False

    def state(self, trainer: Trainer, epoch: int, step: int, partial: tuple[float, int],
              data_rng: torch.Tensor) -> dict:
        rng = rng_state(trainer.generator)
        rng["data"] = data_rng
        return {"epoch": epoch, "step": step, "partial_loss": partial[0], "partial_seen": partial[1],
                "model": trainer.vae.state_dict(), "optimizer": trainer.optimizer.state_dict(), "rng": rng}

    def on_fit_start(self, trainer: Trainer) -> None:
        validated = [(m["validation_elbo"], m["epoch"]) for m in runs.read_jsonl(self.run_dir / runs.METRICS)
                     if isinstance(m.get("validation_elbo"), (int, float))]
        self.best = max(validated, key=lambda best: best[0], default=None)   # the first of equals

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        state = self.state(trainer, trainer.epoch + 1, 0, (0.0, 0), trainer.generator.get_state())
        value = record.get("validation_elbo")
        if value is not None and (self.best is None or value > self.best[0]):
            runs.save_checkpoint(self.run_dir, state, runs.BEST)
            self.best = (value, record["epoch"])
        runs.save_checkpoint(self.run_dir, state)
        if self.patience and self.best is not None and record["epoch"] - self.best[1] >= self.patience:
            self.stopped_early = True
            trainer.stop(f"no better validation ELBO in {self.patience} epochs (the best, {self.best[0]:.3f} nats "
                         f"at epoch {self.best[1]}, is in {runs.BEST})")

    def on_interrupt(self, trainer: Trainer) -> None:
        runs.save_checkpoint(self.run_dir, self.state(trainer, trainer.epoch, trainer.step,
                                                      (trainer.loss_sum, trainer.seen), trainer.epoch_rng))


def caption(run_dir: Path, description: str, record: dict | None) -> str:
    """'RUN · epoch E · DESCRIPTION · test ELBO X nats': what a picture of the run shows."""
    parts = [run_dir.name]
    if record:
        parts.append(f"epoch {record['epoch']}")
    parts.append(description)
    if record and record.get("test_elbo") is not None:
        parts.append(f"test ELBO {record['test_elbo']:.1f} nats")
    elif record and record.get("train_elbo") is not None:
        parts.append(f"train ELBO {record['train_elbo']:.1f} nats")
    return " · ".join(parts)


class RunImages(Callback):
    """samples.png and reconstructions.png in RUN_DIR when training ends, captioned with the run,
    its last epoch, ``description`` (model and likelihood) and its ELBO."""

    def __init__(self, run_dir: Path, data, description: str = ""):
        self.run_dir, self.data, self.description = run_dir, data, description
        self.last: dict | None = None

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.last = record

    def on_fit_end(self, trainer: Trainer) -> None:
        last = self.last or (runs.read_jsonl(self.run_dir / runs.METRICS) or [None])[-1]
        write_run_images(trainer.vae, self.data, self.run_dir, caption=caption(self.run_dir, self.description, last))


class Curves(Callback):
    """curves.png in RUN_DIR (ELBO, reconstruction and KL against epochs and minutes, the KL
    warm-up and learning rate marked): redrawn after an epoch once ``every`` seconds have passed
    since the last drawing (0: every epoch; a drawing costs about a second), and when training ends."""

    def __init__(self, run_dir: Path, description: str = "", every: float = 30.0):
        self.run_dir, self.description, self.every = run_dir, description, every
        self.drawn_at: float | None = None

    def draw(self) -> int:
        records = runs.read_jsonl(self.run_dir / runs.METRICS)
        self.drawn_at = time.perf_counter()
        if not records:
            return 0
        return training_curves(records, self.run_dir / CURVES_PNG,
                               caption=caption(self.run_dir, self.description, records[-1]))

    def on_fit_start(self, trainer: Trainer) -> None:
        self.drawn_at = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if time.perf_counter() - self.drawn_at >= self.every:
            self.draw()

    def on_fit_end(self, trainer: Trainer) -> None:
        self.draw()


class TensorBoard(Callback):
    """TensorBoard event files in RUN_DIR/tensorboard (torch.utils.tensorboard): every number of
    an epoch's record as a scalar (train/elbo, test/kl, ...), and the sample and reconstruction
    grids when training ends."""

    def __init__(self, run_dir: Path, data):
        from torch.utils.tensorboard import SummaryWriter  # an optional extra: pyrovae[tensorboard]
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        self.data = data

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "test", "validation") and name else f"run/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        shape = self.data.dataset.image_shape
        if shape is not None:
            vae, test = trainer.vae, self.data.test
            pictured = picture_rows(vae, test, self.data.train, 16)
            step = trainer.epoch + 1
            self.writer.add_images("samples", prior_samples(vae, rows_of(test, slice(0, 64)), mean=True)
                                   .reshape(-1, *shape).clamp(0, 1).cpu(), step)
            pairs = torch.cat([pictured.rows[0], reconstructions(vae, pictured.rows, pictured.index)])
            pairs = pairs.reshape(-1, *shape).clamp(0, 1).cpu()
            self.writer.add_images("reconstructions", pairs, step)
        self.writer.close()

    def on_interrupt(self, trainer: Trainer) -> None:
        self.writer.close()
