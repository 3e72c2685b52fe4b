"""``fit``: a config (or your own model and guide) in, a run directory out; ``load_run`` reads it back.

A run directory holds config.json, checkpoint.pt, metrics.jsonl and pictures, each written
atomically, under a lock that keeps two processes out. ``fit`` leaves the caller's process as
it found it: Pyro's param store and torch's RNG are scoped to the call.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import runs, user_programs
from ..config import CUSTOM, RESUMABLE, FitConfig, build_vae
from ..core import distributed
from ..core.contract import can, declared
from ..core.errors import UsageError, option, speaking_cli
from ..core.noise import forked_rng, tile_seed
from ..core.programs import CHECK_ROWS, as_batch, num_rows, observed_is_binary, rows_of
from ..core.vae import VAE
from ..data import BUILTIN, Dataset, binarize, check_for_likelihood, load_dataset
from ..guides import GUIDES
from ..guides.meanfield import LocalStepOptions
from ..inference.local_fit import fit_local
from ..objectives import make_objective
from ..training.callbacks import DynamicBinarization, KLWarmup, LocalSteps, TimeBudget, set_rng_state
from ..training.loop import Callback, NonFiniteLoss, Trainer, TrainingInterrupted, after_training
from ..training.optim import make_optimizer
from ..training.schedule import lr_schedule
from ..training.step import LossModule
from .run_callbacks import Checkpoint, Curves, Metrics, RunImages, TensorBoard


DATA_ORDER_STREAM = 5   # beside the noise streams of training (4) and the estimators (0-4)
SKIP_CERTAIN = "skip-certain"   # config.json's record: dynamic binarization drew only the pixels with 0 < p < 1
log = logging.getLogger(__name__)   # what fit says on the way (the CLI shows it on stderr)


@dataclass
class PreparedData:
    dataset: Dataset
    train: tuple[torch.Tensor, ...]   # intensities (dynamic binarization) or the fixed training values
    test: tuple[torch.Tensor, ...]    # binarized once, by the seed, when the likelihood is Bernoulli
    validation: tuple[torch.Tensor, ...] | None = None   # the last --validation training rows, binarized as test


def prepare_data(config: FitConfig, device: torch.device, dataset: Dataset | None = None) -> PreparedData:
    """The data a run trains and is evaluated on: the test split (and the train split, for
    ``--binarize static``) binarized once with the seed, so test ELBOs compare across epochs and
    runs; the last ``config.validation`` training rows held out as a validation split, binarized
    once too (by a generator of its own: the other splits draw as in a run without one)."""
    dataset = dataset or load_dataset(config.dataset, config.data_dir, config.test_fraction, config.seed)
    check_for_likelihood(dataset, config.likelihood)
    train, test = as_batch(dataset.train), as_batch(dataset.test)
    train, validation = split_validation(train, config.validation)
    if config.binarize != "none":
        generator = torch.Generator().manual_seed(config.seed + 1)
        test = (binarize(test[0], generator), *test[1:])
        if config.binarize == "static":
            train = (binarize(train[0], generator), *train[1:])
        if validation is not None:
            validation = (binarize(validation[0], torch.Generator().manual_seed(config.seed + 2)), *validation[1:])
    on_device = lambda rows: None if rows is None else tuple(t.to(device) for t in rows)
    return PreparedData(dataset, on_device(train), on_device(test), on_device(validation))


def split_validation(train: tuple[torch.Tensor, ...], held_out: int
                     ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...] | None]:
    """(the training rows but the last ``held_out``, those last rows; None for 0): a split that
    depends on nothing but the data, so a resumed or reloaded run holds out the same points."""
    if not held_out:
        return train, None
    n = num_rows(train)
    if held_out >= n:
        raise UsageError(f"{option('validation', held_out)} holds out every training row (the data have {n}); pass "
                         f"a smaller {option('validation')} (at most {n - 1})")
    return rows_of(train, slice(0, n - held_out)), rows_of(train, slice(n - held_out, n))


def fit(config: FitConfig, run_dir: str | Path, *, resume: bool = False, overwrite: bool = False,
        progress: bool = True, on_epoch: Callable[[dict], None] | None = None, vae: VAE | None = None,
        data: Dataset | None = None, callbacks: Sequence[Callback] = ()) -> dict:
    """Train as ``config`` says and write RUN_DIR; return the final metrics.

    ``vae``: your own :class:`~pyrovae.vae.VAE` (a Pyro model and guide, see
    :mod:`pyrovae.programs`) instead of the config's ``model`` and ``guide``; ``data``: your own
    :class:`~pyrovae.data.Dataset` instead of ``config.dataset``. ``resume`` continues the run in
    RUN_DIR up to ``config.epochs`` epochs; ``overwrite`` replaces it. ``callbacks`` are added to
    the trainer's own; ``on_epoch(record)`` sees each epoch's metrics.
    """
    context = distributed.current()
    if config.tensorboard:
        check_tensorboard()
    if vae is not None:   # the run is of these programs, not of the config's families
        config = config.for_programs(vae.guide)
    typed = config.typed_paths()
    config = _for_processes(config.with_absolute_paths(), context, vae).validate()
    run_dir = Path(run_dir)
    # the run directory is rank 0's: it checks it, and every rank raises what it found
    config = _on_main(context, lambda: _check_run_dir(config, run_dir, resume, overwrite))
    device = distributed_device(runs.resolve_device(config.device), context)
    dataset = data or load_dataset(config.dataset, config.data_dir, config.test_fraction, config.seed)
    with forked_rng(device, config.seed):   # the initial weights are the seed's
        # every check of the data and the programs happens before anything is written
        vae, built, prepared = _build(config, dataset, vae, device)
        with contextlib.ExitStack() as lock:
            # checked again under the lock: another fit may have started in RUN_DIR since the first check
            checked, restore = _on_main(context, lambda: _claim(run_dir, lock, config, resume, overwrite))
            if checked != config:
                raise UsageError(f"the run in {str(run_dir)!r} changed while this fit was starting; run it again")
            with vae.param_store():
                return _fit(built, run_dir, prepared, device, resume=restore, progress=progress, on_epoch=on_epoch,
                            vae=vae, extra=list(callbacks), typed=typed, context=context)


def _on_main(context: distributed.Context, work: Callable):
    """``work()`` on rank 0; its result, or the :class:`UsageError` it raised, on every rank."""
    result, error = None, None
    if context.is_main:
        try:
            result = work()
        except UsageError as found:
            error = str(found)
    result, error = context.broadcast((result, error))
    if error:
        raise UsageError(error)
    return result


def _claim(run_dir: Path, lock: contextlib.ExitStack, config: FitConfig, resume: bool, overwrite: bool
           ) -> tuple[FitConfig, bool]:
    """Create RUN_DIR, take its lock (held by ``lock``) and check it again; (the config, whether
    to restore a checkpoint: a run stopped before its first one starts from the beginning)."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create {option('out')} {str(run_dir)!r} ({error.strerror}); "
                         "choose a writable folder") from None
    lock.enter_context(runs.run_lock(run_dir))
    return _check_run_dir(config, run_dir, resume, overwrite), resume and (run_dir / runs.CHECKPOINT).exists()


def _build(config: FitConfig, dataset: Dataset, vae: VAE | None, device: torch.device
           ) -> tuple[VAE, FitConfig, "PreparedData"]:
    """The VAE (the config's families, its --program, or the caller's own), checked on the data,
    with what the run needs resolved from the programs: the binarization of a program's data."""
    custom = vae is not None or config.program is not None
    train, _ = split_validation(as_batch(dataset.train), config.validation)
    if vae is None:
        vae = build_vae(config, dataset.data_dim, num_rows(train), dataset.image_shape)
    if config.validation and not vae.can("amortized"):   # your own guide (the config's families are checked)
        raise UsageError(f"{option('validation', config.validation)} needs a guide with an encoder (its ELBO is of "
                         f"held-out points), but this guide has no q for them; drop {option('validation')}")
    if config.binarize is None:   # a program's: binary data for a binary observed site, as the built-in models do
        config = config.replace(binarize="dynamic" if observed_is_binary(vae, train) else "none")
    prepared = prepare_data(config, device, dataset)
    vae = vae.to(device)
    index = torch.arange(min(CHECK_ROWS, num_rows(prepared.train)), device=device) if vae.can("per_datapoint") else None
    with forked_rng(device):   # checks draw nothing of the run's
        info = vae.prepare(_as_trained(config, prepared.train), index)
    if custom and config.binarize != "none" and not all(site.discrete for site in info.observed.values()):
        name, site = next((n, s) for n, s in info.observed.items() if not s.discrete)
        raise UsageError(f"{option('binarize', config.binarize)} draws binary data, but the model's observed site "
                         f"{name!r} is {site.distribution} (support {site.support}); pass "
                         f"{option('binarize', 'none')} to train on the data as it is")
    if next(iter(vae.parameters()), None) is None:
        raise UsageError("the model and guide have no parameters to train (no nn.Module, pyro.module or pyro.param "
                         "reached from them): give the decoder or the encoder a network, or estimate log p(x) of "
                         "these programs directly (pyrovae.estimate_log_likelihood)")
    return vae, config, prepared


def _as_trained(config: FitConfig, train: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A few training rows as a step sees them (binarized for dynamic binarization)."""
    rows = rows_of(train, slice(0, CHECK_ROWS))
    if config.binarize == "dynamic":
        rows = (binarize(rows[0], torch.Generator(device=rows[0].device).manual_seed(0)), *rows[1:])
    return rows



def _check_run_dir(config: FitConfig, run_dir: Path, resume: bool, overwrite: bool) -> FitConfig:
    """Refuse what RUN_DIR cannot take; the config to train with (the run's own on resume)."""
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"{option('out')} {str(run_dir)!r} is a file, not a folder; pass a folder path")
    if resume and overwrite:
        raise UsageError(f"{option('resume', True)} and {option('overwrite', True)} contradict each other; pass one")
    has_config, has_checkpoint, others = runs.run_contents(run_dir)
    if others and not has_config:   # the user's own files: pyrovae writes none of them
        shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        only = f" ({option('overwrite', True)} replaces only a pyrovae run)" if overwrite else ""
        raise UsageError(f"{option('out')} {str(run_dir)!r} holds files that are not a pyrovae run ({shown}); "
                         f"pass a new or empty folder{only}")
    if resume and not has_config:
        raise UsageError(f"{str(run_dir)!r} holds no run to resume; drop {option('resume', True)} to start one")
    # a run stopped before its first checkpoint has nothing to lose: it starts again (with its own
    # options on resume), so the advice of either command works
    if has_checkpoint and not (resume or overwrite):
        raise UsageError(f"{str(run_dir)!r} already holds a run; pass {option('resume', True)} to continue it, "
                         f"{option('overwrite', True)} to replace it, or another {option('out')}")
    return resumed_config(run_dir, config) if resume else config


def _for_processes(config: FitConfig, context: distributed.Context, vae: VAE | None) -> FitConfig:
    """A config several processes can train together: draws seeded per row (a run's numbers do
    not depend on the number of processes), no JIT (DDP cannot hook into Pyro's traced loss), and
    no per-datapoint tables (their rows would need sharding; not supported)."""
    if not context.active:
        return config
    per_datapoint = vae.can("per_datapoint") if vae is not None else \
        can(GUIDES.get(config.guide), "per_datapoint")
    if per_datapoint:
        raise UsageError(f"{option('guide', config.guide)} keeps parameters per training row, which a "
                         "distributed run does not shard; train it in one process (without torchrun)")
    changes = {}
    if config.noise != "per-row":
        changes["noise"] = "per-row"
    if config.jit:
        changes["jit"] = False
    if changes and context.is_main:
        shown = ", ".join(f"{key} = {value}" for key, value in changes.items())
        log.info(f"distributed training over {context.world} processes: {shown} (the draws are seeded per row; DDP "
                 "needs the eager loss)")
    return config.replace(**changes)


def distributed_device(device: torch.device, context: distributed.Context) -> torch.device:
    """One GPU per local rank on a multi-process CUDA run."""
    if context.active and device.type == "cuda":
        return torch.device("cuda", context.local_rank)
    return device


def resumed_config(run_dir: Path, requested: FitConfig) -> FitConfig:
    """The run's own config with what may change on resume taken from the request (options the
    request leaves at their defaults are the run's); any other option that differs is refused,
    naming it."""
    saved = FitConfig.from_run(run_dir)
    merged, conflicts = requested.resumed_from(saved.with_absolute_paths())
    if conflicts:
        shown = "; ".join(f"{option(name, _shown(getattr(requested, name)))} (the run has "
                          f"{_shown(getattr(saved, name), always=True)})" for name in conflicts)
        allowed = ", ".join(option(name) for name in RESUMABLE)
        raise UsageError(f"{shown}: a resumed run keeps its options, only {allowed} may change; "
                         f"drop the others, or start a new run in another {option('out')}")
    return merged.validate()


def _shown(value, always: bool = False):
    """A value as the user would type it: a comma list for widths on the CLI."""
    if isinstance(value, (tuple, list)) and (always or speaking_cli()):
        return ",".join(map(str, value))
    return value


def data_generator(seed: int, device: torch.device) -> torch.Generator:
    """The generator of a run's data order and dynamic binarization: a stream of its own, not the
    one the initial weights drew from (one seed for both gave the first epoch's binarization the
    uniforms of the first layer's weights)."""
    return torch.Generator(device=device).manual_seed(tile_seed(DATA_ORDER_STREAM, seed))


def _fit(config: FitConfig, run_dir: Path, data: PreparedData, device: torch.device, *, resume: bool, progress: bool,
         on_epoch: Callable[[dict], None] | None, vae: VAE, extra: list[Callback], typed: dict,
         context: distributed.Context) -> dict | None:
    # a per-datapoint guide steps its rows by LocalStepOptions (its family's, or as given for one of your own)
    local = config.options_of(LocalStepOptions) if vae.can("per_datapoint") else LocalStepOptions()
    optimizer = make_optimizer(vae, config.lr, local.local_lr, local.local_lr_decay, betas=(config.adam_beta1, 0.999),
                               eps=config.adam_eps)
    objective = make_objective(config.elbo, config.particles, config.jit, rows=min(config.batch_size, num_rows(data.train)))
    loss_module = LossModule(vae, objective, num_rows(data.train),
                             register=config.jit, noise_seed=config.seed if config.noise == "per-row" else None)
    loss = loss_module
    if context.active:   # gradients averaged over the processes, each with its share of every batch
        loss = DistributedDataParallel(loss, device_ids=[device.index] if device.type == "cuda" else None)
    generator = data_generator(config.seed, device)
    initialize = declared(vae.model, "model", "initialize_from_data")
    if initialize is not None and not resume:   # a resumed run's checkpoint holds what this set
        initialize(data.train[0])
    if not resume and context.is_main:   # a new run: what pyrovae wrote here before goes, the user's files stay
        runs.clear_run(run_dir)
        _write_config(run_dir, config, data, device, typed, vae)
    callbacks: list[Callback] = [KLWarmup(config.beta, config.kl_warmup), lr_schedule(config.lr_schedule, config)]
    if config.binarize == "dynamic":
        callbacks.append(DynamicBinarization(skip_certain=_skips_certain_pixels(run_dir, resume, context)))
    if vae.can("per_datapoint") and local.local_steps:
        # the joint step's loss (JIT-compiled where it is), without DDP: each process steps its own rows
        callbacks.append(LocalSteps(vae, loss_module, local.local_steps, num_rows(data.train), local.local_tol))
    checkpoint = Checkpoint(run_dir, config.patience)
    if context.is_main:   # only rank 0 writes the run directory
        callbacks += [Metrics(run_dir, data.test, config.eval_train_points, validation=data.validation), checkpoint]
    callbacks += [TimeBudget(config.minutes), *extra]
    if on_epoch is not None and context.is_main:
        callbacks.append(_OnEpoch(on_epoch))
    if context.is_main:
        description = _description(config, vae)
        callbacks += [RunImages(run_dir, data, description), Curves(run_dir, description, config.curves_every)]
        if config.tensorboard:
            callbacks.append(TensorBoard(run_dir, data))
    trainer = Trainer(vae, loss_module, optimizer, data.train, batch_size=config.batch_size, epochs=config.epochs,
                      generator=generator, callbacks=callbacks, progress=progress, beta_as_tensor=config.jit,
                      context=context, step_loss=loss)
    start = _restore(trainer, run_dir, device, context) if resume else (0, 0, (0.0, 0))
    if resume:   # the run's clock counts the epochs trained before (rank 0's record): --minutes is the whole run's
        seconds = sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0)
                      for m in runs.read_jsonl(run_dir / runs.METRICS)) if context.is_main else None
        trainer.seconds_before = context.broadcast(seconds)
    if start[0] >= config.epochs and context.is_main:
        log.info(f"run already has {start[0]} epochs; nothing to do (pass a larger {option('epochs')} to continue)")
    started = time.perf_counter()
    try:
        trainer.run(*start)
        if context.is_main and not vae.can("amortized") and trainer.epochs_done:   # no encoder: q is fitted
            after_training(lambda: _record_test_fit(run_dir, _test_elbo_by_local_fit(vae, data, config.seed, progress)),
                           "fitting q for the test points (the guide has no encoder)", trainer.epochs_done)
    except TrainingInterrupted as error:
        again = (f"pyrovae fit --out {run_dir} --resume --epochs {config.epochs}" if speaking_cli()
                 else f"fit(config, {str(run_dir)!r}, resume=True)")
        error.args = (f"{error}. {'Resume' if error.during is None else 'Finish it'} with: {again}",)
        raise
    except NonFiniteLoss as error:
        kept = (f"the last good checkpoint in {run_dir} is intact" if (run_dir / runs.CHECKPOINT).exists()
                else "no checkpoint was written yet")
        raise NonFiniteLoss(f"{error}; {kept}. Try a smaller {option('lr')}, or a larger {option('sigma')} "
                            "for a normal likelihood") from None
    if not context.is_main:
        return None   # rank 0 reports
    if trainer.stop_reason:
        again = f"a larger {option('patience')}" if checkpoint.stopped_early else option("resume", True)
        log.info(f"{trainer.stop_reason}; stopping (continue with {again})")
    metrics = runs.read_jsonl(run_dir / runs.METRICS)
    last = metrics[-1] if metrics else {}
    result = {"run_dir": str(run_dir), "epochs": len(metrics), "seed": config.seed, "device": str(device),
              **{key: last.get(key) for key in ("test_elbo", "train_elbo", "test_reconstruction", "test_kl")},
              **{key: last[key] for key in TEST_FIT_KEYS if key in last},
              "seconds_per_epoch": statistics.median([m["train_seconds"] for m in metrics]) if metrics else None,
              "stopped_by_time_budget": bool(trainer.stop_reason) and not checkpoint.stopped_early,
              "processes": context.world}
    if config.validation:
        result.update({"validation_elbo": last.get("validation_elbo"), "stopped_early": checkpoint.stopped_early,
                       "best_validation_elbo": None if checkpoint.best is None else checkpoint.best[0],
                       "best_validation_epoch": None if checkpoint.best is None else checkpoint.best[1]})
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["pictures_seconds"] = round(trainer.fit_end_seconds, 3)   # what the end of training drew
    return result


def _description(config: FitConfig, vae: VAE) -> str:
    """'vae, amortized guide, bernoulli', or what a program of your own is: what a run's pictures are of."""
    if config.model == CUSTOM:
        return vae.describe()
    return f"{config.model}, {config.guide} guide, {config.likelihood}"


def check_tensorboard() -> None:
    """Refuse --tensorboard, before any work, where the optional extra is missing."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        raise UsageError(f"{option('tensorboard', True)} needs the tensorboard package; install it with "
                         "pip install 'pyrovae[tensorboard]' (or drop the option)") from None


class _OnEpoch(Callback):
    def __init__(self, hook: Callable[[dict], None]):
        self.hook = hook

    def on_epoch_end(self, trainer: Trainer, record: dict) -> None:
        self.hook(record)


TEST_FIT_KEYS = ("test_elbo_points", "test_elbo_fit_steps")   # what a test-time fit adds to its epoch's record


def _test_elbo_by_local_fit(vae: VAE, data: PreparedData, seed: int, progress: bool, points: int = 1000,
                            max_steps: int = 500) -> dict:
    """A guide without an encoder has no q for test points: fit one for the first ``points`` of
    them with the model frozen (:mod:`pyrovae.inference.local_fit`); that q's ELBO and its two
    terms, as an epoch's record names them."""
    log.info(f"fitting q for {min(points, num_rows(data.test))} test points (the guide has no encoder)")
    fitted = fit_local(vae, rows_of(data.test, slice(0, points)), init="prior", max_steps=max_steps, seed=seed,
                       progress=progress)
    return {"test_elbo": float(fitted.elbo.mean()), "test_reconstruction": float(fitted.reconstruction.mean()),
            "test_kl": float(fitted.kl.mean()), "test_elbo_points": len(fitted.elbo),
            "test_elbo_fit_steps": max(fitted.steps)}


def _record_test_fit(run_dir: Path, test_fit: dict) -> None:
    """The test-time fit's numbers in the record of the epoch it fitted (the last in
    metrics.jsonl, whose model is checkpoint.pt's)."""
    metrics = runs.read_jsonl(run_dir / runs.METRICS)
    if metrics:
        metrics[-1].update(test_fit)
        runs.write_jsonl(run_dir / runs.METRICS, metrics)


def _write_config(run_dir: Path, config: FitConfig, data: PreparedData, device: torch.device, typed: dict,
                  vae: VAE) -> None:
    values = config.to_dict()
    extra = {"program": user_programs.record(config.program)} if config.program else {}
    runs.write_json(run_dir / runs.CONFIG, {**extra, "program_info": vae.info.to_dict() if vae.info else None,
        "config": values, "versions": runs.versions(), "device": str(device), "seed": config.seed,
        "data_dim": vae.info.data_dim if vae.info else data.dataset.data_dim, "num_train": num_rows(data.train), "num_test": num_rows(data.test),
        "image_shape": data.dataset.image_shape, "format_version": runs.FORMAT_VERSION,
        "typed_paths": typed,   # as the user wrote them, for display; the config holds them resolved
        "binarization_draws": SKIP_CERTAIN})


def _skips_certain_pixels(run_dir: Path, resume: bool, context: distributed.Context) -> bool:
    """Whether dynamic binarization skips the pixels of intensity 0 or 1: a new run's does; a
    resumed run keeps the draws it began with (runs written before pyrovae skipped them record
    nothing and drew every pixel)."""
    if not resume:
        return True
    recorded = runs.read_config(run_dir).get("binarization_draws") if context.is_main else None
    return context.broadcast(recorded) == SKIP_CERTAIN


def _restore(trainer: Trainer, run_dir: Path, device: torch.device, context: distributed.Context
             ) -> tuple[int, int, tuple[float, int]]:
    state = runs.load_checkpoint(run_dir, map_location="cpu") if context.is_main else None
    state = _to_device(context.broadcast(state), device)   # rank 0's checkpoint, on every rank
    load_model_state(trainer.vae, state, run_dir)
    try:
        trainer.optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"], trainer.generator)
    except (ValueError, KeyError, TypeError, RuntimeError) as error:   # a checkpoint older pyrovae wrote unverified
        raise UsageError(f"the optimizer or RNG state of the checkpoint in {str(run_dir)!r} does not fit this run "
                         f"({str(error).splitlines()[0][:100]}); restore the checkpoint, or retrain") from None
    # metrics of epochs after the checkpoint (a crash between the two writes) are dropped
    if context.is_main:
        metrics = runs.read_jsonl(run_dir / runs.METRICS)
        kept = [m for m in metrics if isinstance(m.get("epoch"), int) and m["epoch"] <= state["epoch"]]
        if len(kept) != len(metrics):
            runs.write_jsonl(run_dir / runs.METRICS, kept)
    return state["epoch"], state["step"], (state["partial_loss"], state["partial_seen"])


def _to_device(obj, device: torch.device):
    """A checkpoint's tensors moved to ``device`` (RNG states stay CPU byte tensors)."""
    if isinstance(obj, torch.Tensor):
        return obj if obj.dtype == torch.uint8 else obj.to(device)
    if isinstance(obj, dict):
        return {key: _to_device(value, device) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(value, device) for value in obj)
    return obj


def load_model_state(vae: VAE, state: dict, run_dir: Path) -> None:
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
    checkpoint: str | None = None   # SHA-256 of the checkpoint file it was loaded from
    which: str = "last"             # that file: checkpoint.pt (last) or best.pt (best)

    def points(self, split: str, limit: int | None = None, seed: int = 0
               ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
        """The first ``limit`` points of ``split`` as the model sees them, and, for the training
        split of a per-datapoint guide, their rows in the guide's tables (else None)."""
        if split == "test":
            return rows_of(self.data.test, slice(0, limit)), None
        batch = rows_of(self.data.train, slice(0, limit))
        if self.config.binarize == "dynamic":   # training saw fresh draws; evaluate one, fixed by the seed
            x = batch[0]
            batch = (binarize(x.cpu(), torch.Generator().manual_seed(seed)).to(x.device), *batch[1:])
        index = torch.arange(num_rows(batch), device=batch[0].device) if self.vae.can("per_datapoint") else None
        return batch, index


def load_run(run_dir: str | Path, device: str = "auto", data_dir: str | None = None, *, vae: VAE | None = None,
             data: Dataset | None = None, dataset: str | None = None, program: str | None = None,
             checkpoint: str = "last") -> Run:
    """Load RUN_DIR's config, data (test set binarized as in training) and checkpoint: the last
    (checkpoint.pt), or with ``checkpoint="best"`` the one of the best validation ELBO (best.pt).

    ``data_dir`` (MNIST), ``dataset`` (a data file) or ``program`` (the FILE.py:FACTORY of a
    ``--program`` run) say where the run's data or program is now, if it moved since training. A
    run of programs passed to ``fit`` from Python needs them again: ``vae=VAE(model, guide)`` (and
    ``data=``); a ``--program`` run finds its own.
    """
    run_dir = Path(run_dir)
    if checkpoint not in runs.CHECKPOINTS:
        raise UsageError(f"unknown {option('checkpoint', checkpoint)}; use {' or '.join(runs.CHECKPOINTS)}")
    if not run_dir.is_dir():
        raise UsageError(f"RUN_DIR {str(run_dir)!r} is not a folder; pass the {option('out')} folder of `pyrovae fit`")
    saved = runs.read_config(run_dir)
    config = FitConfig.from_run(run_dir)
    if program is not None:
        config.program = user_programs.absolute_spec(program)
        user_programs.check_spec(config.program)
    if CUSTOM in (config.model, config.guide) and vae is None and config.program is None:
        raise UsageError(f"{str(run_dir)!r} was trained on your own model and guide from Python; pass them as "
                         "load_run(run_dir, vae=VAE(model, guide)) (a run trained with --program finds them itself)")
    if data_dir:
        config.data_dir = str(Path(data_dir).expanduser().resolve())
    if data is None:
        config.dataset = _data_file(config, saved, run_dir, dataset)
    torch_device = runs.resolve_device(device)
    state = runs.load_checkpoint(run_dir, map_location=torch_device, name=runs.CHECKPOINTS[checkpoint])
    prepared = prepare_data(config, torch_device, data)
    with forked_rng():   # initial weights (overwritten below) draw from torch's RNG
        if vae is None and config.program is not None:
            vae = user_programs.load_program(config.program, run_dir, saved.get("program"))
        elif vae is None:
            vae = build_vae(config, prepared.dataset.data_dim, saved.get("num_train", num_rows(prepared.train)),
                            prepared.dataset.image_shape)
        vae = vae.to(torch_device)
        index = torch.arange(min(CHECK_ROWS, num_rows(prepared.train)), device=torch_device) \
            if vae.can("per_datapoint") else None
        vae.prepare(_as_trained(config, prepared.train), index)   # adopts pyro.param sites before the load
    load_model_state(vae, state, run_dir)
    vae.eval()
    return Run(vae=vae, config=config, data=prepared, run_dir=run_dir, epoch=state["epoch"],
               checkpoint=state["file_sha256"], which=checkpoint)


def _data_file(config: FitConfig, saved: dict, run_dir: Path, moved_to: str | None) -> str:
    """The run's dataset: its recorded file, or where ``moved_to`` says it is now (checked
    against the run's number of rows and features)."""
    if config.dataset in BUILTIN:
        if moved_to is not None:
            raise UsageError(f"{str(run_dir)!r} trained on {config.dataset!r}, not a data file; "
                             f"{option('dataset')} only points a run at its moved data file (MNIST: {option('data-dir')})")
        return config.dataset
    typed = (saved.get("typed_paths") or {}).get("dataset") or config.dataset
    if moved_to is None:
        if not Path(config.dataset).exists():
            raise UsageError(f"the data file of {str(run_dir)!r}, {typed!r} (at {config.dataset}), does not exist; "
                             f"pass {option('dataset')} with its new location")
        return config.dataset
    path = Path(moved_to).expanduser().resolve()
    if not path.is_file():
        raise UsageError(f"{option('dataset')} {moved_to!r} is not a file; pass the run's .npz/.npy data file")
    found = load_dataset(str(path), None, config.test_fraction, config.seed)
    num_train = saved.get("num_train")   # the rows trained on, without the validation split
    expected = (None if num_train is None else num_train + config.validation, saved.get("data_dim"))
    if (len(as_batch(found.train)[0]), found.data_dim) != expected and None not in expected:
        raise UsageError(f"{moved_to!r} has {len(as_batch(found.train)[0])} training rows of {found.data_dim} "
                         f"features, but {str(run_dir)!r} trained on {expected[0]} of {expected[1]}; pass the run's "
                         "own data file")
    return str(path)
