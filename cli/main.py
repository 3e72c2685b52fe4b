"""The ``pyrovae`` command: options are parsed here, the work is done by the library.

Every command prints one JSON object on stdout and its progress on stderr. Bad input gets a
one-line ``pyrovae: error: ...`` on stderr and exit code 2.
"""
from __future__ import annotations

import shlex
import signal
import sys
import threading
from pathlib import Path

import click
import torch.distributed as dist

from pyrovae.cli.options import DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, THREADS, emit, output_file
from pyrovae.config import PRESETS, RESUMABLE
from pyrovae.core.contract import declared
from pyrovae.core.errors import UsageError, cli_audience
from pyrovae.guides import GUIDES
from pyrovae.models import LIKELIHOODS, MODELS
from pyrovae.objectives import OBJECTIVES

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def fail(message: str, code: int = EXIT_USAGE, kind: str = "error", every_rank: bool = False) -> None:
    from pyrovae.core.distributed import current
    if every_rank or current().is_main:   # a distributed run's processes stop together: rank 0 says why
        click.echo(f"pyrovae: {kind}: {message}", err=True)
    sys.exit(code)


# what to make smaller when memory runs out, by command
SMALLER = {"evaluate": "--batch-size (and --chunk-size)", "sample": "--n", "reconstruct": "--n", "latent-map": "--n"}


class PyrovaeGroup(click.Group):
    """Turns bad input into one line on stderr and exit code 2, never a traceback."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        # SIGTERM as Ctrl-C wherever no loop holds the signals (pyrovae.interrupts): one line, exit
        # 130, not a silent death; restored after the command (the CLI also runs inside test processes)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None
        try:
            self._main(args, prog_name, complete_var, **extra)
        finally:
            if main_thread:
                signal.signal(signal.SIGTERM, previous)

    def _main(self, args, prog_name, complete_var, **extra):
        from pyrovae.core import distributed
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


def _hidden(ctx, param, value: str):
    from pyrovae.config import parse_hidden
    return parse_hidden(value)


# options that pick or shape the built-in families: a --program replaces them all
PROGRAM_REPLACES = ("likelihood", "sigma", "model", "latent_dim", "hidden", "z1_dim", "z1_hidden", "guide", "flows",
                    "refine_steps", "refine_lr", "flow_hidden", "local_lr", "local_steps", "local_tol", "local_lr_decay")


def output_png(path: str) -> Path:
    return output_file(path, "--out", (".png",))


@cli.command()
@click.option("--dataset", default="mnist-sample", show_default=True,
              help="mnist (60,000 digits, from --data-dir), mnist-sample (5,000 digits that ship with pyrovae), "
                   "toy2d (a 2-D mixture of 8 Gaussians), or a .npz (arrays train, test) / .npy file.")
@DATA_DIR
@click.option("--test-fraction", default=0.1, show_default=True,
              help="Share of the rows of an .npy file held out as the test split.")
@click.option("--likelihood", type=click.Choice(list(LIKELIHOODS)), default="bernoulli", show_default=True,
              help="p(x | z): bernoulli for binary images (pixels in [0, 1]), normal for real-valued data.")
@click.option("--sigma", default="1.0",
              help="--likelihood normal only: a fixed sigma (0.7071 makes -log p(x|z) the squared error), "
                   "'learned' (one scalar) or 'learned-pixel' (one per dimension) [default: 1.0].")
@click.option("--binarize", type=click.Choice(["dynamic", "static", "none"]), default=None,
              help="Bernoulli data: resample every epoch (default), fix once by the seed, or keep intensities.")
@click.option("--model", type=click.Choice(list(MODELS)), default="vae", show_default=True,
              help=_registry_help(MODELS, "model"))
@click.option("--latent-dim", default=50, show_default=True,
              help="Dimensions of the latent z (of the top layer z2 for --model two-layer).")
@click.option("--hidden", default="400", show_default=True, callback=_hidden,
              help="Comma list of hidden widths between x and the first latent layer (encoder and decoder); "
                   "'' for linear.")
@click.option("--z1-dim", default=100, show_default=True, help="--model two-layer: units of the bottom layer z1.")
@click.option("--z1-hidden", default="100,100", show_default=True, callback=_hidden,
              help="--model two-layer: hidden widths between z1 and z2.")
@click.option("--guide", type=click.Choice(list(GUIDES)), default="amortized", show_default=True,
              help=_registry_help(GUIDES, "guide"))
@click.option("--flows", default=2, show_default=True, help="--guide flow: IAF steps per latent layer.")
@click.option("--refine-steps", default=5, show_default=True,
              help="--guide semi-amortized: gradient steps on each datapoint's q, in training and evaluation.")
@click.option("--refine-lr", default=0.2, show_default=True,
              help="--guide semi-amortized: their step size (each row's gradient clipped to norm 5).")
@click.option("--flow-hidden", default=0, show_default=True,
              help="--guide flow: hidden units of each MADE (0: twice the latent layer's size).")
@click.option("--local-lr", default=0.2, show_default=True, help="--guide meanfield: learning rate of the q_i.")
@click.option("--local-steps", default=4, show_default=True,
              help="--guide meanfield: at most this many steps on a batch's own q_i before each joint step.")
@click.option("--local-tol", default=0.0, show_default=True,
              help="--guide meanfield: stop a batch's local steps once one gains less than this (nats per point); "
                   "0 takes all --local-steps.")
@click.option("--local-lr-decay", default=0.0, show_default=True,
              help="--guide meanfield: a row's learning rate is --local-lr x (1 + t)^-DECAY after its t-th step "
                   "(Robbins-Monro, Hoffman et al. 2013); 0 keeps it constant.")
@click.option("--elbo", type=click.Choice(list(OBJECTIVES)), default="trace", show_default=True,
              help="Trace_ELBO, TraceMeanField_ELBO (analytic KL), or the IWAE bound.")
@click.option("--particles", default=1, show_default=True,
              help="Samples of z per datapoint in each step (the K of --elbo iwae).")
@click.option("--noise", type=click.Choice(["global", "per-row"]), default="global", show_default=True,
              help="Where training draws its reparameterization noise: torch's generator, or seeded per (epoch, "
                   "step, row of the batch), so that a run gives the same numbers in any number of processes "
                   "(what torchrun runs use).")
@click.option("--jit/--no-jit", default=None,
              help="Pyro's JIT ELBOs: the compiled loss [default: on for trace and meanfield, off for iwae].")
@click.option("--beta", default=1.0, show_default=True,
              help="Coefficient of the KL term: loss = -(reconstruction - beta KL); 1 is the true ELBO.")
@click.option("--kl-warmup", default=0, show_default=True,
              help="Ramp beta linearly from 0 over this many epochs (0: no warm-up).")
@click.option("--epochs", default=10, show_default=True, help="Epochs in total (with --resume: the new total).")
@click.option("--batch-size", default=128, show_default=True,
              help="Datapoints per SVI step (the global batch of a torchrun run, shared by its processes).")
@click.option("--lr", default=1e-3, show_default=True, help="Adam's learning rate for the model and the encoder.")
@click.option("--lr-decay", default=1.0, show_default=True,
              help="Multiply the learning rate by this after every epoch (1: constant).")
@click.option("--minutes", default=0.0, show_default=True,
              help="Stop after the epoch that passes this many minutes of wall time (0: no limit).")
@click.option("--seed", default=0, show_default=True, help="Seeds the weights, the data order and every draw.")
@DEVICE
@click.option("--program", default=None,
              help="Your own Pyro model and guide: FILE.py:FACTORY or module:FACTORY, where FACTORY() returns a "
                   "pyrovae.VAE or a (model, guide) pair (every sample site in pyro.plate('data', len(x))). The run "
                   "records where it is; --model, --guide, --likelihood and their options do not apply.")
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
@click.option("--tensorboard", is_flag=True,
              help="Also write TensorBoard event files to RUN_DIR/tensorboard (scalars every epoch, image grids at "
                   "the end); needs pip install 'pyrovae[tensorboard]'.")
@click.option("--curves-every", default=30.0, show_default=True,
              help="Redraw RUN_DIR/curves.png after an epoch once this many seconds have passed since the last "
                   "drawing (a drawing takes about a second); 0: after every epoch. Always drawn at the end.")
@THREADS
@click.pass_context
def fit(ctx: click.Context, run_dir: str, resume: bool, overwrite: bool, quiet: bool, preset: str | None,
        **options) -> None:
    """Train a VAE by SVI and write RUN_DIR (config, checkpoint, metrics, images)."""
    import dataclasses

    from pyrovae.config import FitConfig
    from pyrovae.workflows import fit as train
    given = {name: value for name, value in options.items()
             if ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT}
    if given.get("program"):
        families = [name for name in given if name in PROGRAM_REPLACES]
        if families or preset:
            flags = ", ".join("--" + name.replace("_", "-") for name in families) or f"--preset {preset}"
            raise UsageError(f"--program brings its own model and guide, so {flags} would not apply; drop "
                             f"{'it' if len(families) <= 1 else 'them'}")
    for name, value in PRESETS.get(preset, {}).items():
        given.setdefault(name, value)
    if resume and (Path(run_dir) / "config.json").exists():
        # the run's own options, and what this command line says: the library refuses what may not change
        config = dataclasses.replace(FitConfig.from_run(run_dir), **given)
    else:
        config = FitConfig(**{**options, **given})
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
from pyrovae.cli.compare import compare  # noqa: E402
from pyrovae.cli.evaluate import evaluate  # noqa: E402
from pyrovae.cli.show import show  # noqa: E402

cli.add_command(evaluate)
cli.add_command(compare)
cli.add_command(bdmc)
cli.add_command(show)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
