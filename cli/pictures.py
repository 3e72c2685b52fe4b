"""The pictures of a run: ``pyrovae sample``, ``reconstruct``, ``interpolate``, ``traverse`` and
``latent-map``; each draws with :mod:`pyrovae.pictures` and prints what it wrote."""
from __future__ import annotations

from pathlib import Path

import click

from pyrovae.cli.main import short_help
from pyrovae.cli.options import CHECKPOINT, DATA_DIR, DEVICE, MOVED_DATASET, MOVED_PROGRAM, emit, output_file
from pyrovae.core.errors import UsageError
from pyrovae.core.programs import rows_of
from pyrovae.pictures.figures import MAX_PIXELS, grid_capacity, grid_figure_size, reconstruction_figure, sample_grid
from pyrovae.pictures.plots import (draw_interpolation, draw_traversal, latent_map as draw, picture_rows, prior_samples,
                                    reconstructions)
from pyrovae.workflows import load_run


def picturing(command):
    """The options of a command that pictures RUN_DIR: --out, which checkpoint, and where its model
    and data are now."""
    for decorate in reversed([click.option("--out", required=True, type=click.Path(), help="PNG file to write."),
                              CHECKPOINT, DEVICE, DATA_DIR, MOVED_DATASET, MOVED_PROGRAM]):
        command = decorate(command)
    return command


def output_png(path: str) -> Path:
    return output_file(path, "--out", (".png",))


@click.command(short_help=short_help("sample"))
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=64, show_default=True, type=click.IntRange(min=1), help="Images to draw.")
@click.option("--show", type=click.Choice(["means", "draws"]), default="means", show_default=True,
              help="means: E[x | z], the images a decoder paints (as samples.png); draws: x ~ p(x | z), which for "
                   "a Bernoulli likelihood is salt-and-pepper binary pixels.")
@click.option("--seed", default=0, show_default=True, help="Seeds z (and the draws).")
@picturing
def sample(run_dir: str, n: int, show: str, seed: int, out: str, checkpoint: str, device: str, data_dir: str | None,
           dataset: str | None, program: str | None) -> None:
    """Images from the model's prior: z ~ p(z), then E[x | z] (or x ~ p(x | z) with --show draws)."""
    path = output_png(out)
    run = _image_run(run_dir, checkpoint, device, data_dir, dataset, program)
    _check_grid(n, run.data.dataset.image_shape)
    template = rows_of(run.data.test, [i % len(run.data.test[0]) for i in range(n)])
    images = prior_samples(run.vae, template, mean=show == "means", seed=seed)
    what = "decoder means E[x | z]" if show == "means" else "draws x ~ p(x | z)"
    sample_grid(images.cpu(), run.data.dataset.image_shape, path,
                caption=f"{Path(run_dir).name} · {_epoch(run, checkpoint)} · prior samples, {what} · seed {seed}")
    emit({"out": str(path), "n": n, "shows": what, "run_dir": run_dir, "checkpoint": checkpoint})


@click.command(short_help=short_help("reconstruct"))
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=16, show_default=True, type=click.IntRange(min=1), help="Images to reconstruct.")
@picturing
def reconstruct(run_dir: str, n: int, out: str, checkpoint: str, device: str, data_dir: str | None,
                dataset: str | None, program: str | None) -> None:
    """Test images (training images for a guide without an encoder) above their reconstructions
    E[x | z] at the guide's mean of z."""
    path = output_png(out)
    run = _image_run(run_dir, checkpoint, device, data_dir, dataset, program)
    pictured = picture_rows(run.vae, run.data.test, run.data.train, n)
    x = pictured.rows[0]
    _check_grid(len(x), run.data.dataset.image_shape, reconstructions=True)
    reconstruction_figure(x.cpu(), reconstructions(run.vae, pictured.rows, pictured.index).cpu(),
                          run.data.dataset.image_shape, path,
                          caption=f"{Path(run_dir).name} · {_epoch(run, checkpoint)} · {pictured.images} and "
                                  f"reconstructions E[x | z = mean of q(z | x)]")
    emit({"out": str(path), "n": len(x), "split": pictured.split, "run_dir": run_dir, "checkpoint": checkpoint})


def _pair(text: str) -> tuple[int, int]:
    try:
        a, b = (int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected two row numbers I,J (e.g. 0,1), got {text!r}") from None
    return a, b


SITE = click.option("--site", default=None,
                    help="The latent site to picture (e.g. z1 or z2 of --model two-layer) [default: the model's first, "
                         "its top layer].")


@click.command(short_help=short_help("interpolate"))
@click.argument("run_dir", type=click.Path())
@click.option("--images", default="0,1", show_default=True, callback=lambda ctx, param, value: _pair(value),
              help="I,J: the two test images (training images for a guide without an encoder) whose posterior means "
                   "are the ends of the path.")
@click.option("--steps", default=10, show_default=True, type=click.IntRange(min=2, max=100),
              help="Decoded points along the path, the ends included.")
@click.option("--path", "path_kind", type=click.Choice(["linear", "spherical"]), default="linear", show_default=True,
              help="linear: (1 − t)·a + t·b; spherical: slerp, which stays near the shell where N(0, I) has its mass.")
@picturing
def interpolate(run_dir: str, images: tuple[int, int], steps: int, path_kind: str, out: str, checkpoint: str,
                device: str, data_dir: str | None, dataset: str | None, program: str | None) -> None:
    """Two images and, between them, the decoder means E[x | z] along a path between their
    posterior means (the guide's means, every latent site)."""
    path = output_png(out)
    run = _image_run(run_dir, checkpoint, device, data_dir, dataset, program)
    shape = run.data.dataset.image_shape
    _check_rows(1, steps + 2, shape)
    pictured = picture_rows(run.vae, run.data.test, run.data.train, max(images) + 1)
    result = draw_interpolation(run.vae, pictured, images, steps=steps, spherical=path_kind == "spherical",
                                image_shape=shape, path=path, caption=f"{Path(run_dir).name} · {_epoch(run, checkpoint)}")
    emit({"out": str(path), "run_dir": run_dir, "checkpoint": checkpoint, **result})


@click.command(short_help=short_help("traverse"))
@click.argument("run_dir", type=click.Path())
@click.option("--units", default=10, show_default=True, type=click.IntRange(min=1),
              help="Rows: the most active latent units, one each.")
@click.option("--steps", default=9, show_default=True, type=click.IntRange(min=2, max=100),
              help="Values of each unit, evenly from -3 to 3 prior standard deviations.")
@click.option("--points", default=1000, show_default=True, type=click.IntRange(min=2),
              help="Test points (training points for a guide without an encoder) whose posterior means rank the "
                   "units by activity, Var_x(E_q[z_u | x]).")
@SITE
@picturing
def traverse(run_dir: str, units: int, steps: int, points: int, site: str | None, out: str, checkpoint: str,
             device: str, data_dir: str | None, dataset: str | None, program: str | None) -> None:
    """One row per latent unit, the most active first: E[x | z] with that unit swept from -3 to 3
    prior standard deviations and every other unit at the prior mean."""
    path = output_png(out)
    run = _image_run(run_dir, checkpoint, device, data_dir, dataset, program)
    shape = run.data.dataset.image_shape
    _check_rows(units, steps, shape)
    pictured = picture_rows(run.vae, run.data.test, run.data.train, points)
    result = draw_traversal(run.vae, pictured, site, units=units, steps=steps, span=3.0, image_shape=shape, path=path,
                            caption=f"{Path(run_dir).name} · {_epoch(run, checkpoint)}")
    emit({"out": str(path), "run_dir": run_dir, "checkpoint": checkpoint, **result})


@click.command("latent-map", short_help=short_help("latent-map"))
@click.argument("run_dir", type=click.Path())
@click.option("--n", default=2000, show_default=True, type=click.IntRange(min=2),
              help="Test points to map (training points for a guide without an encoder).")
@SITE
@picturing
def latent_map(run_dir: str, n: int, site: str | None, out: str, checkpoint: str, device: str, data_dir: str | None,
               dataset: str | None, program: str | None) -> None:
    """Posterior means of test points (training points for a guide without an encoder): the
    latents for 2-D latents, else a PCA projection, coloured by label."""
    path = output_png(out)
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program, checkpoint=checkpoint)
    pictured = picture_rows(run.vae, run.data.test, run.data.train, n)
    labels = run.data.dataset.test_labels if pictured.split == "test" else None   # the data keep test labels only
    points = len(pictured.rows[0])
    legend = "digit" if run.data.dataset.name.startswith("mnist") else "label"
    result = draw(run.vae, pictured.rows, None if labels is None else labels[:points], path, site=site,
                  index=pictured.index, caption=f"{Path(run_dir).name} · {_epoch(run, checkpoint)} · {points} {pictured.images}", legend=legend)
    emit({"out": str(path), "run_dir": run_dir, "checkpoint": checkpoint, "split": pictured.split, **result})


def _epoch(run, checkpoint: str) -> str:
    """The caption's checkpoint: "epoch 12", or "epoch 9 (best.pt)"."""
    return f"epoch {run.epoch}" + (" (best.pt)" if checkpoint == "best" else "")


def _check_grid(n: int, image_shape, reconstructions: bool = False) -> None:
    """Refuse, before any work, more images than one picture can hold."""
    most = grid_capacity(image_shape, reconstructions=reconstructions)
    if n > most:
        raise UsageError(f"--n {n} is more images than one picture holds (at most {most}: a picture has at most "
                         f"{MAX_PIXELS} pixels a side); pass --n {most} or less")


def _check_rows(rows: int, ncols: int, image_shape) -> None:
    """Refuse, before any work, a picture of ROWS rows of NCOLS images larger than one can be."""
    width, height = grid_figure_size(rows * ncols, image_shape, ncols, caption_lines=4, labelled=True)
    if max(width, height) > MAX_PIXELS:
        raise UsageError(f"{rows} rows of {ncols} images make a {width}x{height}-pixel picture (at most {MAX_PIXELS} "
                         f"pixels a side); pass fewer --steps or --units")


def _image_run(run_dir: str, checkpoint: str, device: str, data_dir: str | None, dataset: str | None,
               program: str | None):
    run = load_run(run_dir, device, data_dir, dataset=dataset, program=program, checkpoint=checkpoint)
    if run.data.dataset.image_shape is None:
        raise UsageError(f"{run.data.dataset.name} rows are not images; use latent-map or the metrics instead")
    return run
