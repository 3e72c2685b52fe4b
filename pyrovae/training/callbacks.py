"""What happens around the SVI steps of :class:`~pyrovae.training.loop.Trainer`, one callback each."""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable

import pyro
import torch

from .. import runs
from ..objectives.traces import elbo_terms
from ..programs import Batch, num_rows, rows_of
from ..vae import VAE
from .loop import Callback, Trainer
from .step import LossModule, svi_step


CURVES_PNG = "curves.png"
TENSORBOARD_DIR = "tensorboard"


class KLWarmup(Callback):
    """β of epoch e (from 0) = beta · min(1, (e + 1) / warmup): a linear ramp (Bowman et al. 2016)."""

    def __init__(self, beta: float = 1.0, warmup: int = 0):
        self.beta, self.warmup = beta, warmup

    def on_epoch_start(self, trainer: Trainer) -> None:
        trainer.beta = self.beta if self.warmup == 0 else self.beta * min(1.0, (trainer.epoch + 1) / self.warmup)


class LRDecay(Callback):
    """lr of epoch e = initial lr · decay^e, per parameter group: a function of the epoch alone,
    so a resumed run needs no state for it."""

    def __init__(self, decay: float = 1.0):
        self.decay = decay

    def on_epoch_start(self, trainer: Trainer) -> None:
        for group in trainer.optimizer.param_groups:
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * self.decay ** trainer.epoch


class DynamicBinarization(Callback):
    """x ~ Bernoulli(intensities) anew every epoch (the first tensor of the batch), drawn from
    the trainer's generator before the epoch's permutation."""

    def on_epoch_start(self, trainer: Trainer) -> None:
        x, *rest = trainer.train
        # u < p with u ~ U(0, 1) is Bernoulli(p): on CPU the very draws of torch.bernoulli(x,
        # generator) (so older runs resume bit-identically), 43% faster (MNIST's 47M pixels:
        # 0.49 s against 0.86 s, ~8% of an epoch; torch 2.14)
        uniform = torch.rand(x.shape, generator=trainer.generator, device=x.device, dtype=x.dtype)
        trainer.epoch_data = ((uniform < x).to(x.dtype), *rest)


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
        beta = getattr(trainer, "step_beta", trainer.beta)   # the joint step's β (a tensor under the JIT)
        key = getattr(self.loss, "noise_key", None)   # (epoch, step, positions) of the joint step
        try:
            for k in range(self.steps):
                if key is not None:   # seeded noise: each local step draws its own
                    self.loss.noise_key = (*key, k + 1)
                window.append(svi_step(self.loss, trainer.optimizer, index, beta, *batch, inputs=self.rows)
                              / self.num_data)
                self.taken += 1
                if self.tol and len(window) == self.WINDOW:
                    mean = sum(window) / len(window)
                    if previous is not None and previous - mean < self.tol:
                        break
                    window, previous = [], mean
        finally:
            if key is not None:
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


class Metrics(Callback):
    """After each epoch: the train ELBO on the first ``train_points`` rows (as this epoch saw
    them) and the test ELBO (for a guide that can encode new points), appended to metrics.jsonl."""

    def __init__(self, run_dir: Path, test: Batch | None, train_points: int = 10_000,
                 log: Callable[[str], None] | None = None):
        self.run_dir, self.test, self.train_points = run_dir, test, train_points
        self.log = log or (lambda line: print(line, file=sys.stderr))

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        started = time.perf_counter()
        vae = trainer.vae
        train = evaluate_elbo(vae, rows_of(trainer.epoch_data, slice(0, self.train_points)),
                              indexed=vae.can("per_datapoint"))
        record.update({"train_elbo": train["elbo"], "train_reconstruction": train["reconstruction"],
                       "train_kl": train["kl"]})
        if self.test is not None and vae.can("amortized"):
            test = evaluate_elbo(vae, self.test)
            record.update({f"test_{key}": value for key, value in test.items()})
        record["eval_seconds"] = round(time.perf_counter() - started, 4)
        runs.append_jsonl(self.run_dir / runs.METRICS, record)
        test_text = f", test ELBO {record['test_elbo']:.3f}" if "test_elbo" in record else ""
        self.log(f"epoch {record['epoch']}: train ELBO {record['train_elbo']:.3f}{test_text} nats "
                 f"({record['train_seconds']:.1f} s)")


def rng_state(generator: torch.Generator) -> dict:
    return {"torch": torch.get_rng_state(), "data": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    # RNG states are CPU byte tensors, wherever the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["data"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Checkpoint(Callback):
    """checkpoint.pt after every epoch and on an interrupt (mid-epoch: the epoch's starting RNG
    state, its step and running loss, so a resumed run replays the epoch's draws and skips the
    steps it took). Written atomically: a crash leaves the previous checkpoint."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def save(self, trainer: Trainer, epoch: int, step: int, partial: tuple[float, int],
             data_rng: torch.Tensor) -> None:
        rng = rng_state(trainer.generator)
        rng["data"] = data_rng
        runs.save_checkpoint(self.run_dir, {
            "epoch": epoch, "step": step, "partial_loss": partial[0], "partial_seen": partial[1],
            "model": trainer.vae.state_dict(), "optimizer": trainer.optimizer.state_dict(), "rng": rng})

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.save(trainer, trainer.epoch + 1, 0, (0.0, 0), trainer.generator.get_state())

    def on_interrupt(self, trainer: Trainer) -> None:
        self.save(trainer, trainer.epoch, trainer.step, (trainer.loss_sum, trainer.seen), trainer.epoch_rng)


class TimeBudget(Callback):
    """Stop after the epoch that passes ``minutes`` of wall time (0: no budget)."""

    def __init__(self, minutes: float):
        self.minutes = minutes
        self.started = time.perf_counter()

    def on_fit_start(self, trainer: Trainer) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        if self.minutes and time.perf_counter() - self.started > 60 * self.minutes \
                and trainer.epoch + 1 < trainer.epochs:
            trainer.stop(f"time budget of {self.minutes} minutes used after epoch {trainer.epoch + 1}")


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
        from ..plots import write_run_images
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
        from ..figures import training_curves
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
        from torch.utils.tensorboard import SummaryWriter   # an optional extra: pyrovae[tensorboard]
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR))
        self.data = data

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        step = record["epoch"]
        for key, value in record.items():
            if key == "epoch" or not isinstance(value, (int, float)):
                continue
            split, _, name = key.partition("_")
            tag = f"{split}/{name}" if split in ("train", "test") and name else f"run/{key}"
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def on_fit_end(self, trainer: Trainer) -> None:
        from ..plots import prior_samples, reconstructions
        shape = self.data.dataset.image_shape
        if shape is not None:
            vae, test = trainer.vae, self.data.test
            batch = rows_of(test if vae.can("amortized") else self.data.train, slice(0, 16))
            index = None if vae.can("amortized") else torch.arange(num_rows(batch), device=batch[0].device)
            step = trainer.epoch + 1
            self.writer.add_images("samples", prior_samples(vae, rows_of(test, slice(0, 64)), mean=True)
                                   .reshape(-1, *shape).clamp(0, 1).cpu(), step)
            pairs = torch.cat([batch[0], reconstructions(vae, batch, index)]).reshape(-1, *shape).clamp(0, 1).cpu()
            self.writer.add_images("reconstructions", pairs, step)
        self.writer.close()

    def on_interrupt(self, trainer: Trainer) -> None:
        self.writer.close()
