"""The ``pyrovae`` command: options are parsed here, the work is done by the library.

Every command prints one JSON object on stdout and its progress on stderr. Bad input gets a
one-line ``pyrovae: error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import contextlib
import logging
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Iterator

import click
import torch.distributed as dist

from pyrovae.cli.options import (DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, THREADS, emit, given, options_from,
                                 output_file)
from pyrovae.config import PRESETS, RESUMABLE, guide_options, model_options
from pyrovae.data import DataOptions
from pyrovae.objectives import ObjectiveOptions
from pyrovae.training.options import TrainingOptions
from pyrovae.core import distributed
from pyrovae.core.contract import declared
from pyrovae.core.errors import UsageError, cli_audience
from pyrovae.guides import GUIDES
from pyrovae.models import MODELS

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE, kind: str = "error", every_rank: bool = False) -> None:
    if every_rank or distributed.current().is_main:   # a distributed run's processes stop together: rank 0 says why
        click.echo(f"pyrovae: {kind}: {message}", err=True)
    sys.exit(code)


# what to make smaller when memory runs out, by command
SMALLER = {"evaluate": "--batch-size (and --chunk-size)", "sample": "--n", "reconstruct": "--n", "latent-map": "--n"}


@contextlib.contextmanager
def library_log_on_stderr() -> Iterator[None]:
    """What the library logs (the ``pyrovae`` logger: epoch lines, notes) as plain lines on stderr,
    rank 0's only in a distributed run: the CLI's to set, for the life of a command."""
    logger = logging.getLogger("pyrovae")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(lambda record: distributed.current().is_main)
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class PyrovaeGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # SIGTERM as Ctrl-C wherever no loop holds the signals (pyrovae.interrupts): one line, exit
        # 130, not a silent death; restored after the command (the CLI also runs inside test processes)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
        try:
            with library_log_on_stderr():
                self._main(args, prog_name, complete_var, **extra)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _main(self, args, prog_name, complete_var, **extra):
        from pyrovae.core.errors import Interrupted
        from pyrovae.evaluation.driver import EvaluationInterrupted
        from pyrovae.training import NonFiniteLoss
        argv = list(sys.argv[1:] if args is None else args)
        command = next((arg for arg in argv if arg in self.commands), None)
        smaller = f"rerun with a smaller {SMALLER.get(command, '--batch-size')}"
        try:
            with cli_audience():   # messages name options as flags, as the user typed them
                if distributed.launched_by_torchrun():   # torchrun: join the process group, once
                    device = argv[argv.index("--device") + 1] if "--device" in argv[:-1] else "auto"
                    distributed.setup(device)
                code = super().main(args, prog_name or "pyrovae", complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as error:
            click.echo(error.ctx.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as error:
            hint = f" (see pyrovae {error.ctx.info_name} --help)" if error.ctx and error.ctx.parent else ""
            fail(error.format_message().replace("\n", " ") + hint)
        except (UsageError, click.BadParameter) as error:
            fail(str(error).replace("\n", " "))
        except EvaluationInterrupted as error:   # the finished points are saved: say how to go on
            again = " ".join(shlex.quote(arg) for arg in argv + ([] if "--resume" in argv else ["--resume"]))
            hint = f"; continue with: pyrovae {again}" if error.path else ""
            fail(error.message + hint, EXIT_INTERRUPTED, kind="interrupted")
        except Interrupted as error:   # what was finished is saved; the message says how to go on
            fail(str(error), EXIT_INTERRUPTED, kind="interrupted")
        except NonFiniteLoss as error:
            fail(str(error), 1)
        except click.Abort:
            fail("stopped before anything was saved", EXIT_INTERRUPTED, kind="interrupted")
        except MemoryError as error:
            fail(f"out of memory ({error}); {smaller}", 1)
        except RuntimeError as error:
            detail = str(error).splitlines()[0][:120]
            if _out_of_memory(error):
                fail(f"out of memory ({detail}); {smaller}", 1)
            if distributed.current().active and _peer_lost(error):   # the process that could say why is gone
                fail(f"another process of this distributed run stopped ({detail}); the run folder keeps its last "
                     "checkpoint: rerun the job (fit with --resume)", 1, every_rank=True)
            raise
        except OSError as error:   # e.g. a full disk mid-run: files are written atomically, the old ones stay
            where = f" on {error.filename!r}" if error.filename else ""
            fail(f"{error.strerror or error}{where}; free space or fix permissions, then rerun "
                 "(pyrovae fit --resume continues from the last checkpoint)", 1)
        distributed.teardown()
        sys.exit(code if isinstance(code, int) else 0)


def _peer_lost(error: RuntimeError) -> bool:
    """A collective that failed because another rank died (gloo raises a bare RuntimeError,
    torch 2.14; nccl a DistBackendError)."""
    text = str(error)
    return isinstance(error, dist.DistError) or any(
        words in text for words in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL"))


def _out_of_memory(error: BaseException) -> bool:
    """torch's CPU and CUDA allocators' failures (torch.OutOfMemoryError is a RuntimeError)."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower() or \
        type(error).__name__ == "OutOfMemoryError"


@click.group(cls=PyrovaeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyrovae")
def cli() -> None:
    """pyrovae: a VAE written as a Pyro program; amortized vs mean-field VI; honest log p(x)."""


def _registry_help(registry: dict, role: str) -> str:
    """'name: what it is; ...' from each registered family's ``cli_help``."""
    return "; ".join(f"{name}: {declared(family, role, 'cli_help') or name}" for name, family in registry.items()) + "."


def output_png(path: str) -> Path:
    return output_file(path, "--out", (".png",))


@cli.command()
@click.option("--model", type=click.Choice(list(MODELS)), default="vae", show_default=True,
              help=_registry_help(MODELS, "model"))
@click.option("--guide", type=click.Choice(list(GUIDES)), default="amortized", show_default=True,
              help=_registry_help(GUIDES, "guide"))
@click.option("--program", default=None,
              help="Your own Pyro model and guide: FILE.py:FACTORY or module:FACTORY, where FACTORY() returns a "
                   "pyrovae.VAE or a (model, guide) pair (every sample site in pyro.plate('data', len(x))). The run "
                   "records where it is; --model, --guide and their options do not apply.")
@options_from(DataOptions)
@DATA_DIR
@options_from(*((model_options(name), f"--model {name}") for name in MODELS))
@options_from(*((guide_options(name), f"--guide {name}") for name in GUIDES))
@options_from(ObjectiveOptions)
@options_from(TrainingOptions)
@DEVICE
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="A named recipe; options given on the command line override it.")
@click.option("--out", "run_dir", default="runs/latest", show_default=True, type=click.Path(),
              help="RUN_DIR to write: config.json, checkpoint.pt, metrics.jsonl, curves.png, samples.png, "
                   "reconstructions.png.")
@click.option("--resume", is_flag=True,
              help=f"Continue the run in --out from its checkpoint, with its own options; only "
                   f"{', '.join('--' + name.replace('_', '-') for name in RESUMABLE)} may differ (and --dataset "
                   f"when the data file has moved). Any other option given must match the run's.")
@click.option("--overwrite", is_flag=True, help="Replace a run already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bar (the epoch lines and the JSON stay).")
@THREADS
@click.pass_context
def fit(ctx: click.Context, run_dir: str, resume: bool, overwrite: bool, quiet: bool, preset: str | None,
        **options) -> None:
    """Train a VAE by SVI and write RUN_DIR (config, checkpoint, metrics, images)."""
    from pyrovae.config import FitConfig
    from pyrovae.workflows import fit as train
    chosen = given(ctx, list(options))   # the defaults are the library's: only what the command line says
    if chosen.get("program") and preset:
        raise UsageError(f"--program brings its own model and guide, so --preset {preset} would not apply; drop it")
    config_values = {**PRESETS.get(preset, {}), **chosen}
    if resume and (Path(run_dir) / "config.json").exists():
        # the run's own options, and what this command line says: the library refuses what may not change
        config = FitConfig.from_run(run_dir).replace(**config_values)
    else:
        config = FitConfig(**config_values)
    config.refuse_unused()
    emit(train(config, run_dir, resume=resume, overwrite=overwrite, progress=not quiet))


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=64, show_default=True, type=click.IntRange(min=1), help="Images to draw.")
@click.option("--show", type=click.Choice(["means", "draws"]), default="means", show_default=True,
              help="means: E[x | z], the images a decoder paints (as samples.png); draws: x ~ p(x | z), which for "
                   "a Bernoulli likelihood is salt-and-pepper binary pixels.")
@click.option("--seed", default=0, show_default=True, help="Seeds z (and the draws).")
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
def sample(run_dir: str, n: int, show: str, seed: int, out: str, device: str, data_dir: str | None,
           dataset: str | None, program: str | None) -> None:
    """Images from the model's prior: z ~ p(z), then E[x | z] (or x ~ p(x | z) with --show draws)."""
    from pyrovae.core.programs import rows_of
    from pyrovae.pictures.figures import sample_grid
    from pyrovae.pictures.plots import prior_samples
    path = output_png(out)
    run = _image_run(run_dir, device, data_dir, dataset, program)
    _check_grid(n, run.data.dataset.image_shape)
    template = rows_of(run.data.test, [i % len(run.data.test[0]) for i in range(n)])
    images = prior_samples(run.vae, template, mean=show == "means", seed=seed)
    what = "decoder means E[x | z]" if show == "means" else "draws x ~ p(x | z)"
    sample_grid(images.cpu(), run.data.dataset.image_shape, path,
                caption=f"{Path(run_dir).name} · epoch {run.epoch} · prior samples, {what} · seed {seed}")
    emit({"out": str(path), "n": n, "shows": what, "run_dir": run_dir})


@cli.command()
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=16, show_default=True, type=click.IntRange(min=1), help="Images to reconstruct.")
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
def reconstruct(run_dir: str, n: int, out: str, device: str, data_dir: str | None, dataset: str | None, program: str | None) -> None:
    """Test images (training images for a guide without an encoder) above their reconstructions
    E[x | z] at the guide's mean of z."""
    from pyrovae.pictures.figures import reconstruction_figure
    from pyrovae.pictures.plots import picture_rows, reconstructions
    path = output_png(out)
    run = _image_run(run_dir, device, data_dir, dataset, program)
    pictured = picture_rows(run.vae, run.data.test, run.data.train, n)
    x = pictured.rows[0]
    _check_grid(len(x), run.data.dataset.image_shape, reconstructions=True)
    reconstruction_figure(x.cpu(), reconstructions(run.vae, pictured.rows, pictured.index).cpu(),
                          run.data.dataset.image_shape, path,
                          caption=f"{Path(run_dir).name} · epoch {run.epoch} · {pictured.images} and "
                                  f"reconstructions E[x | z = mean of q(z | x)]")
    emit({"out": str(path), "n": len(x), "split": pictured.split, "run_dir": run_dir})


@cli.command("latent-map")
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=2000, show_default=True, type=click.IntRange(min=2), help="Test points to map.")
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
def latent_map(run_dir: str, n: int, out: str, device: str, data_dir: str | None, dataset: str | None, program: str | None) -> None:
    """Encoder means of test points: the latents for 2-D latents, else a PCA projection."""
    from pyrovae.core.programs import rows_of
    from pyrovae.pictures.plots import latent_map as draw
    from pyrovae.workflows import load_run
    path = output_png(out)
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    if not run.vae.can("amortized"):
        raise UsageError(f"latent-map needs an encoder; this run has --guide {run.config.guide}")
    labels = run.data.dataset.test_labels
    result = draw(run.vae, rows_of(run.data.test, slice(0, n)), None if labels is None else labels[:n], path)
    emit({"out": str(path), "run_dir": run_dir, **result})


def _check_grid(n: int, image_shape, reconstructions: bool = False) -> None:
    """Refuse, before any work, more images than one picture can hold."""
    from pyrovae.pictures.figures import MAX_PIXELS, grid_capacity
    most = grid_capacity(image_shape, reconstructions=reconstructions)
    if n > most:
        raise UsageError(f"--n {n} is more images than one picture holds (at most {most}: a picture has at most "
                         f"{MAX_PIXELS} pixels a side); pass --n {most} or less")


def _image_run(run_dir: str, device: str, data_dir: str | None, dataset: str | None, program: str | None):
    from pyrovae.workflows import load_run
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    if run.data.dataset.image_shape is None:
        raise UsageError(f"{run.data.dataset.name} rows are not images; use latent-map or the metrics instead")
    return run


from pyrovae.cli.bdmc import bdmc  # noqa: E402
from pyrovae.cli.certify import certify  # noqa: E402
from pyrovae.cli.compare import compare  # noqa: E402
from pyrovae.cli.evaluate import evaluate  # noqa: E402
from pyrovae.cli.show import show  # noqa: E402

cli.add_command(evaluate)
cli.add_command(compare)
cli.add_command(bdmc)
cli.add_command(certify)
cli.add_command(show)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
