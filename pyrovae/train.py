"""Stochastic variational inference for the VAE: minibatches, the Pyro objective, Adam.

Each step draws a minibatch of rows, evaluates the objective's differentiable loss from
Pyro traces of ``vae.model`` and ``vae.guide`` (the data plate scales it to the whole data
set), and takes an Adam step on the decoder and guide parameters. After each epoch it
records the train and test ELBO (beta = 1) and checkpoints RUN_DIR atomically; an
interrupt (SIGINT/SIGTERM) finishes the step, checkpoints mid-epoch, and a resumed run
continues bit-identically.
"""
from __future__ import annotations

import math
import random
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyro
import torch
from tqdm.auto import tqdm

from . import runs
from .config import FitConfig, build_vae
from .data import Dataset, binarize, check_for_likelihood, load_dataset
from .errors import UsageError
from .model import VAE, frozen
from .objectives import elbo_terms, make_objective
from .optim import make_optimizer


class TrainingInterrupted(Exception):
    """Raised after SIGINT/SIGTERM once the checkpoint is safely written."""


class NonFiniteLoss(Exception):
    """The loss became NaN or inf; the last good checkpoint is left as it was."""


@dataclass
class PreparedData:
    dataset: Dataset
    train: torch.Tensor    # intensities (dynamic binarization) or the fixed training values
    test: torch.Tensor     # binarized once, by the seed, when the likelihood is Bernoulli


def prepare_data(config: FitConfig, device: torch.device) -> PreparedData:
    dataset = load_dataset(config.dataset, config.data_dir, config.test_fraction, config.seed)
    check_for_likelihood(dataset, config.likelihood)
    train, test = dataset.train, dataset.test
    if config.binarize != "none":
        # the test set is binarized once by the seed, so test ELBOs compare across epochs and runs
        generator = torch.Generator().manual_seed(config.seed + 1)
        test = binarize(test, generator)
        if config.binarize == "static":
            train = binarize(train, generator)
    return PreparedData(dataset, train.to(device), test.to(device))


def kl_coefficient(config: FitConfig, epoch: int) -> float:
    """beta, ramped linearly over the first ``kl_warmup`` epochs (epoch counts from 0)."""
    if config.kl_warmup == 0:
        return config.beta
    return config.beta * min(1.0, (epoch + 1) / config.kl_warmup)


@torch.no_grad()
def evaluate_elbo(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Mean per-datapoint ELBO (beta = 1, analytic KL) and its two terms, in nats."""
    recon_sum, kl_sum = 0.0, 0.0
    for start in range(0, len(x), batch_size):
        batch = x[start:start + batch_size]
        index = torch.arange(start, start + len(batch), device=x.device)
        recon, kl = elbo_terms(vae.model, vae.guide, batch, index, num_data=len(x))
        recon_sum += recon.sum().item()
        kl_sum += kl.sum().item()
    n = len(x)
    return {"elbo": (recon_sum - kl_sum) / n, "reconstruction": recon_sum / n, "kl": kl_sum / n}


def _rng_state(generator: torch.Generator) -> dict:
    python_state = random.getstate()
    return {"torch": torch.get_rng_state(), "data": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": [python_state[0], list(python_state[1]), python_state[2]]}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    # RNG states are CPU byte tensors, wherever the checkpoint was mapped to
    torch.set_rng_state(state["torch"].cpu())
    generator.set_state(state["data"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def training_step(objective, optimizer: torch.optim.Optimizer, model: Callable, guide: Callable, x: torch.Tensor,
                  index: torch.Tensor, beta: float | torch.Tensor, num_data: int) -> float:
    """One SVI step: the objective's loss from Pyro traces of model and guide, then an optimizer
    step. Raises FloatingPointError, before touching any parameter, when the loss is not finite."""
    loss = objective.differentiable_loss(model, guide, x, index, beta, num_data=num_data)
    value = loss.item()
    if not math.isfinite(value):
        raise FloatingPointError(str(value))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return value


class _StopFlag:
    """SIGINT/SIGTERM set the flag; training stops after the current step."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def fit(config: FitConfig, run_dir: str | Path, resume: bool = False, overwrite: bool = False,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train a VAE as ``config`` says, writing RUN_DIR; return the final metrics.

    ``resume`` continues the run in RUN_DIR from its checkpoint up to ``config.epochs`` epochs.
    """
    config.validate()
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {str(run_dir)!r} is a file, not a folder; pass a folder path")
    has_run = (run_dir / runs.CONFIG).exists() or (run_dir / runs.CHECKPOINT).exists()
    if resume and not has_run:
        raise UsageError(f"--resume: {str(run_dir)!r} holds no run to resume; drop --resume to start one")
    if has_run and not (resume or overwrite):
        raise UsageError(f"{str(run_dir)!r} already holds a run; pass --resume to continue it, "
                         "--overwrite to replace it, or another --out")
    if resume:
        config = _resumed_config(run_dir, config)
    device = runs.resolve_device(config.device)
    data = prepare_data(config, device)   # all input checks happen before anything is written
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create --out {str(run_dir)!r} ({error.strerror}); choose a writable folder") from None
    with runs.run_lock(run_dir):
        return _Trainer(config, run_dir, data, device, progress, on_epoch).run(resume)


def _resumed_config(run_dir: Path, requested: FitConfig) -> FitConfig:
    """The run's own config, with only the number of epochs taken from the request."""
    saved = FitConfig.from_dict(runs.read_config(run_dir)["config"])
    if requested.epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {requested.epochs}")
    saved.epochs = requested.epochs
    saved.device = requested.device
    return saved.validate()


class _Trainer:
    def __init__(self, config: FitConfig, run_dir: Path, data: PreparedData, device: torch.device,
                 progress: bool, on_epoch: Callable[[dict], None] | None):
        self.config, self.run_dir, self.data, self.device = config, run_dir, data, device
        self.progress, self.on_epoch = progress, on_epoch
        pyro.clear_param_store()   # pyro.module names are global: start from a clean store
        pyro.set_rng_seed(config.seed)
        # data order and binarization, drawn where the data lives
        self.generator = torch.Generator(device=device).manual_seed(config.seed)
        self.vae = build_vae(config, data.dataset.data_dim, len(data.train)).to(device)
        self.optimizer = make_optimizer(self.vae, config.lr, config.local_lr)   # row-sparse for mean-field
        self.objective = make_objective(config.elbo, config.particles, config.jit)
        self.vae.register_params = config.jit   # the JIT ELBOs find parameters in the param store
        self.model, self.guide = self.vae.model, self.vae.guide   # one object each: the JIT keys on id()
        self.validated = False
        # a mean-field guide's rows are stepped only when their batch comes up: give them extra steps
        self.local_steps = config.local_steps if config.guide == "meanfield" else 0
        self.local_objective = make_objective(config.elbo, config.particles)   # eager: the decoder is frozen

    def run(self, resume: bool) -> dict:
        config, start_epoch, start_step, partial = self.config, 0, 0, (0.0, 0)
        if resume:
            start_epoch, start_step, partial = self._restore()
        else:
            for stale in (runs.METRICS, runs.CHECKPOINT):
                (self.run_dir / stale).unlink(missing_ok=True)
            self._write_config()
        if start_epoch >= config.epochs:
            print(f"run already has {start_epoch} epochs; nothing to do (pass a larger --epochs to continue)",
                  file=sys.stderr)
        started = time.perf_counter()
        stopped_by_budget = False
        with _StopFlag() as stop:
            for epoch in range(start_epoch, config.epochs):
                self._epoch(epoch, start_step if epoch == start_epoch else 0,
                            partial if epoch == start_epoch else (0.0, 0), stop)
                if config.minutes and time.perf_counter() - started > 60 * config.minutes and epoch + 1 < config.epochs:
                    print(f"time budget of {config.minutes} minutes used after epoch {epoch + 1}; stopping "
                          f"(continue with --resume)", file=sys.stderr)
                    stopped_by_budget = True
                    break
        from .plots import write_run_images
        write_run_images(self.vae, self.data, self.run_dir)
        metrics = runs.read_jsonl(self.run_dir / runs.METRICS)
        last = metrics[-1] if metrics else {}
        result = {"run_dir": str(self.run_dir), "epochs": len(metrics), "test_elbo": last.get("test_elbo"),
                  "train_elbo": last.get("train_elbo"), "test_reconstruction": last.get("test_reconstruction"),
                  "test_kl": last.get("test_kl"), "seed": config.seed, "device": str(self.device),
                  "seconds_per_epoch": statistics.median([m["train_seconds"] for m in metrics]) if metrics else None,
                  "stopped_by_time_budget": stopped_by_budget}
        if config.guide == "meanfield" and metrics:
            result.update(self._meanfield_test_elbo())
        result["seconds"] = round(time.perf_counter() - started, 3)
        return result

    def _meanfield_test_elbo(self, points: int = 1000, max_steps: int = 500) -> dict:
        """A mean-field guide has no parameters for test points: fit q_i for the first ``points``
        of them with the decoder frozen (pyrovae.local_fit), and report that ELBO."""
        from .local_fit import fit_local
        fitted = fit_local(self.vae, self.data.test[:points], init="prior", max_steps=max_steps, seed=self.config.seed)
        return {"test_elbo": float(fitted.elbo.mean()), "test_elbo_points": len(fitted.elbo),
                "test_elbo_fit_steps": max(fitted.steps)}

    def _epoch(self, epoch: int, start_step: int, partial: tuple[float, int], stop: _StopFlag) -> None:
        config, n = self.config, len(self.data.train)
        epoch_rng = self.generator.get_state()   # resuming mid-epoch replays the draws below
        x_train = binarize(self.data.train, self.generator) if config.binarize == "dynamic" else self.data.train
        order = torch.randperm(n, generator=self.generator, device=self.device)
        beta = kl_coefficient(config, epoch)
        for group in self.optimizer.param_groups:   # a function of the epoch alone, so resume needs no state
            group["lr"] = group.setdefault("initial_lr", group["lr"]) * config.lr_decay ** epoch
        beta_arg = torch.tensor(beta, device=self.device) if config.jit else beta
        batches = range(0, n, config.batch_size)
        loss_sum, seen = partial
        started = time.perf_counter()
        bar = tqdm(total=len(batches), initial=start_step, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not self.progress, file=sys.stderr, leave=False)
        for step, start in enumerate(batches):
            if step < start_step:
                continue
            index = order[start:start + config.batch_size]
            x_batch = x_train[index]
            try:
                # Pyro's validation checks supports and shapes on the first step; then it only costs time
                with pyro.validation_enabled(not self.validated):
                    if self.local_steps:   # classical SVI: first move this batch's own q_i
                        with frozen(self.vae.decoder):
                            for _ in range(self.local_steps):
                                training_step(self.local_objective, self.optimizer, self.model, self.guide,
                                              x_batch, index, beta, n)
                    loss = training_step(self.objective, self.optimizer, self.model, self.guide, x_batch,
                                         index, beta_arg, n)
                self.validated = True
            except FloatingPointError as error:
                bar.close()
                kept = (f"the last good checkpoint in {self.run_dir} is intact"
                        if (self.run_dir / runs.CHECKPOINT).exists() else "no checkpoint was written yet")
                raise NonFiniteLoss(f"the loss became {error} at epoch {epoch + 1}, step {step + 1}; {kept}. "
                                    "Try a smaller --lr, or --sigma with a larger floor for --likelihood normal")
            loss_sum += loss * len(index) / n   # loss / (n / batch) = per-batch sum
            seen += len(index)
            bar.set_postfix(loss=f"{loss / n:.2f}", refresh=False)
            bar.update()
            if stop.signal is not None:
                bar.close()
                self._checkpoint(epoch, step + 1, (loss_sum, seen), epoch_rng)
                raise TrainingInterrupted(
                    f"stopped by signal {stop.signal} at epoch {epoch + 1}, step {step + 1}; checkpoint written. "
                    f"Resume with: pyrovae fit --out {self.run_dir} --resume --epochs {config.epochs}")
        bar.close()
        train_seconds = time.perf_counter() - started
        started = time.perf_counter()
        record = {"epoch": epoch + 1, "beta": beta, "train_objective": -loss_sum / max(seen, 1),
                  "train_seconds": round(train_seconds, 4)}
        record.update(self._elbo_metrics(x_train))
        record["eval_seconds"] = round(time.perf_counter() - started, 4)
        runs.append_jsonl(self.run_dir / runs.METRICS, record)
        self._checkpoint(epoch + 1, 0, (0.0, 0), self.generator.get_state())
        test = f", test ELBO {record['test_elbo']:.3f}" if "test_elbo" in record else ""  # none for meanfield
        print(f"epoch {epoch + 1}: train ELBO {record['train_elbo']:.3f}{test} nats ({train_seconds:.1f} s)",
              file=sys.stderr)
        if self.on_epoch:
            self.on_epoch(record)

    def _elbo_metrics(self, x_train: torch.Tensor) -> dict:
        train_points = x_train[:self.config.eval_train_points]
        train = evaluate_elbo(self.vae, train_points)
        test = evaluate_elbo(self.vae, self.data.test) if self.config.guide == "amortized" else {}
        return {"train_elbo": train["elbo"], "train_reconstruction": train["reconstruction"],
                "train_kl": train["kl"], **{f"test_{key}": value for key, value in test.items()}}

    def _write_config(self) -> None:
        runs.write_json(self.run_dir / runs.CONFIG, {
            "config": self.config.to_dict(), "versions": runs.versions(), "device": str(self.device),
            "seed": self.config.seed, "data_dim": self.data.dataset.data_dim, "num_train": len(self.data.train),
            "num_test": len(self.data.test), "image_shape": self.data.dataset.image_shape,
            "format_version": runs.FORMAT_VERSION})

    def _checkpoint(self, epoch: int, step: int, partial: tuple[float, int], epoch_rng: torch.Tensor) -> None:
        rng = _rng_state(self.generator)
        rng["data"] = epoch_rng
        runs.save_checkpoint(self.run_dir, {
            "epoch": epoch, "step": step, "partial_loss": partial[0], "partial_seen": partial[1],
            "model": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(), "rng": rng})

    def _restore(self) -> tuple[int, int, tuple[float, int]]:
        state = runs.load_checkpoint(self.run_dir, map_location=self.device)
        _load_model_state(self.vae, state, self.run_dir)
        self.optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(state["rng"], self.generator)
        # metrics of epochs after the checkpoint (a crash between the two writes) are dropped
        metrics = runs.read_jsonl(self.run_dir / runs.METRICS)
        kept = [m for m in metrics if m["epoch"] <= state["epoch"]]
        if len(kept) != len(metrics):
            runs.write_jsonl(self.run_dir / runs.METRICS, kept)
        return state["epoch"], state["step"], (state["partial_loss"], state["partial_seen"])


def _load_model_state(vae: VAE, state: dict, run_dir: Path) -> None:
    try:
        vae.load_state_dict(state["model"])
    except (RuntimeError, KeyError) as error:
        raise UsageError(f"the checkpoint in {str(run_dir)!r} does not match its config's architecture "
                         f"({str(error).splitlines()[0][:100]}); retrain or restore the run") from None


@dataclass
class Run:
    """A trained run, loaded for evaluation: the VAE (in eval mode), its config and data."""
    vae: VAE
    config: FitConfig
    data: PreparedData
    run_dir: Path
    epoch: int

    def points(self, split: str, limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``limit`` points of ``split`` as the model sees them, and, for the training
        split of a mean-field run, their row indices in the guide's tables (else None)."""
        if split == "test":
            return self.data.test[:limit], None
        x = self.data.train[:limit]
        if self.config.binarize == "dynamic":   # training saw fresh draws; evaluate one, fixed by the seed
            x = binarize(x.cpu(), torch.Generator().manual_seed(seed)).to(x.device)
        index = torch.arange(len(x), device=x.device) if self.config.guide == "meanfield" else None
        return x, index


def load_run(run_dir: str | Path, device: str = "auto", data_dir: str | None = None) -> Run:
    """Load RUN_DIR's config, data (test set binarized as in training) and checkpoint."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"RUN_DIR {str(run_dir)!r} is not a folder; pass the --out folder of `pyrovae fit`")
    saved = runs.read_config(run_dir)
    try:
        config = FitConfig.from_dict(saved["config"])
    except (KeyError, TypeError) as error:
        raise UsageError(f"{str(run_dir / runs.CONFIG)!r} is not a pyrovae config ({error}); restore it") from None
    if data_dir:
        config.data_dir = data_dir
    torch_device = runs.resolve_device(device)
    state = runs.load_checkpoint(run_dir, map_location=torch_device)
    data = prepare_data(config, torch_device)
    vae = build_vae(config, data.dataset.data_dim, saved.get("num_train", len(data.train))).to(torch_device)
    _load_model_state(vae, state, run_dir)
    vae.eval()
    return Run(vae, config, data, run_dir, state["epoch"])
