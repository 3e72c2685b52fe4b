"""The pictures of a run: ``pyrovae sample``, ``reconstruct``, ``interpolate``, ``traverse`` and
``latent-map``; each draws with :mod:`pyrovae.pictures` and prints what it wrote."""
from __future__ import annotations

from pathlib import Path

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, emit, output_file
from pyrovae.core.errors import UsageError
from pyrovae.core.programs import rows_of
from pyrovae.pictures.figures import MAX_PIXELS, grid_capacity, reconstruction_figure, sample_grid
from pyrovae.pictures.plots import latent_map as draw, picture_rows, prior_samples, reconstructions
from pyrovae.workflows import load_run


def output_png(path: str) -> Path:
    return output_file(path, "--out", (".png",))


@click.command(short_help=short_help("sample"))
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
    path = output_png(out)
    run = _image_run(run_dir, device, data_dir, dataset, program)
    _check_grid(n, run.data.dataset.image_shape)
    template = rows_of(run.data.test, [i % len(run.data.test[0]) for i in range(n)])
    images = prior_samples(run.vae, template, mean=show == "means", seed=seed)
    what = "decoder means E[x | z]" if show == "means" else "draws x ~ p(x | z)"
    sample_grid(images.cpu(), run.data.dataset.image_shape, path,
                caption=f"{Path(run_dir).name} · epoch {run.epoch} · prior samples, {what} · seed {seed}")
    emit({"out": str(path), "n": n, "shows": what, "run_dir": run_dir})


@click.command(short_help=short_help("reconstruct"))
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


@click.command("latent-map", short_help=short_help("latent-map"))
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=2000, show_default=True, type=click.IntRange(min=2), help="Test points to map.")
@click.option("--out", required=True, type=click.Path(), help="PNG file to write.")
@DEVICE
@DATA_DIR
@MOVED_DATASET
@MOVED_PROGRAM
def latent_map(run_dir: str, n: int, out: str, device: str, data_dir: str | None, dataset: str | None, program: str | None) -> None:
    """Encoder means of test points: the latents for 2-D latents, else a PCA projection."""
    path = output_png(out)
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    if not run.vae.can("amortized"):
        raise UsageError(f"latent-map needs an encoder; this run has --guide {run.config.guide}")
    labels = run.data.dataset.test_labels
    result = draw(run.vae, rows_of(run.data.test, slice(0, n)), None if labels is None else labels[:n], path)
    emit({"out": str(path), "run_dir": run_dir, **result})


def _check_grid(n: int, image_shape, reconstructions: bool = False) -> None:
    """Refuse, before any work, more images than one picture can hold."""
    most = grid_capacity(image_shape, reconstructions=reconstructions)
    if n > most:
        raise UsageError(f"--n {n} is more images than one picture holds (at most {most}: a picture has at most "
                         f"{MAX_PIXELS} pixels a side); pass --n {most} or less")


def _image_run(run_dir: str, device: str, data_dir: str | None, dataset: str | None, program: str | None):
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program)
    if run.data.dataset.image_shape is None:
        raise UsageError(f"{run.data.dataset.name} rows are not images; use latent-map or the metrics instead")
    return run
