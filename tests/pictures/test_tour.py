"""The latent tour (``pyrovae interpolate``, ``traverse``) and ``latent-map``: captioned PNGs of
the size the layout says, on every guide (a guide without an encoder pictures its training rows),
and the decoded values they show."""
import json
import math

import numpy as np
import pyro
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from pyrovae.cli.main import cli
from pyrovae.core.programs import rows_of
from pyrovae.pictures import figures, plots
from pyrovae.workflows import load_run

SHAPE = (1, 8, 8)   # the tiny images of these tests; magnified 12x (96 // 8) in the pictures
TINY = ["--hidden", "16", "--latent-dim", "3", "--batch-size", "50", "--lr", "0.01", "--quiet", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_json(result):
    assert result.exit_code == 0, (result.output, result.exception)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """200 training and 50 test 8x8 images ([N, H, W]): a bright square at one of four places."""
    rng = np.random.default_rng(0)
    x = np.zeros((250, 8, 8), dtype=np.float32)
    for i, (r, c) in enumerate(rng.integers(0, 2, size=(250, 2)) * 4):
        x[i, r:r + 4, c:c + 4] = 1.0
    path = tmp_path_factory.mktemp("tour") / "squares.npz"
    np.savez(path, train=x[:200], test=x[200:])
    return path


@pytest.fixture(scope="module")
def runs(images, tmp_path_factory):
    """Two epochs of an amortized, a mean-field and a two-layer VAE on ``images``."""
    folder = tmp_path_factory.mktemp("runs")
    made = {}
    for name, extra in {"amortized": [], "meanfield": ["--guide", "meanfield"],
                        "two-layer": ["--model", "two-layer", "--z1-dim", "4", "--z1-hidden", "8"]}.items():
        pyro.clear_param_store()
        made[name] = folder / name
        one_json(invoke("fit", "--dataset", images, "--epochs", 2, "--out", made[name], *TINY, *extra))
    return made


def caption_and_size(path, margin=12, band=21):
    """(width, height) of a PNG Pillow can decode, after checking that its caption band (a grid's:
    a line of 21 px below a 12 px white margin; a scatter's title is in the top 25 px) has text."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        pixels = np.asarray(image.convert("L"))
    assert (margin == 0 or pixels[:margin].min() == 255) and pixels[margin:margin + band].min() < 100, "no caption"
    return pixels.shape[1], pixels.shape[0]


def labelled_size(n, ncols, width):
    """The size labelled_rows gives n images ncols a row with a caption of however many lines
    makes WIDTH's figure (the width does not depend on the caption)."""
    sizes = [figures.grid_figure_size(n, SHAPE, ncols, lines, labelled=True) for lines in range(1, 6)]
    assert all(size[0] == width for size in sizes)
    return {size[1] for size in sizes}


@pytest.mark.parametrize("guide", ["amortized", "meanfield", "two-layer"])
@pytest.mark.parametrize("path", ["linear", "spherical"])
def test_interpolate_writes_a_captioned_row(runs, tmp_path, guide, path):
    out = tmp_path / "i.png"
    result = one_json(invoke("interpolate", runs[guide], "--out", out, "--images", "3,7", "--steps", 6,
                             "--path", path, "--device", "cpu"))
    assert result["images"] == [3, 7] and result["steps"] == 6 and result["path"] == path
    assert result["split"] == ("train" if guide == "meanfield" else "test")   # no encoder: its training rows
    width, height = caption_and_size(out)
    expected = figures.grid_figure_size(8, SHAPE, 8, 1, labelled=True)   # 6 steps and the two images
    assert width == expected[0] and height in labelled_size(8, 8, width)


@pytest.mark.parametrize("guide", ["amortized", "meanfield", "two-layer"])
def test_traverse_writes_a_row_per_unit_most_active_first(runs, tmp_path, guide):
    out = tmp_path / "t.png"
    result = one_json(invoke("traverse", runs[guide], "--out", out, "--units", 2, "--steps", 5, "--device", "cpu"))
    assert len(result["units"]) == 2 and result["values"] == [-3.0, -1.5, 0.0, 1.5, 3.0]
    assert result["activity"] == sorted(result["activity"], reverse=True)
    assert result["site"] == ("z2" if guide == "two-layer" else "z")   # the model's top layer by default
    assert result["split"] == ("train" if guide == "meanfield" else "test")
    width, height = caption_and_size(out)
    assert width == figures.grid_figure_size(10, SHAPE, 5, 1, labelled=True)[0]
    assert height in labelled_size(10, 5, width)


def test_latent_map_takes_a_site_a_caption_and_a_guide_without_encoder(runs, tmp_path):
    out = tmp_path / "m.png"
    default = one_json(invoke("latent-map", runs["two-layer"], "--out", out, "--n", 30, "--device", "cpu"))
    assert default["site"] == "z2" and caption_and_size(out, margin=0, band=25) == figures.SCATTER_SIZE
    z1 = one_json(invoke("latent-map", runs["two-layer"], "--out", out, "--n", 30, "--site", "z1", "--device", "cpu"))
    assert z1["site"] == "z1" and z1["projection"] == "pca"   # 4 units in z1
    meanfield = one_json(invoke("latent-map", runs["meanfield"], "--out", out, "--n", 30, "--device", "cpu"))
    assert meanfield["split"] == "train" and meanfield["points"] == 30


@pytest.mark.parametrize("command", ["interpolate", "traverse", "latent-map"])
def test_an_unknown_site_or_row_is_one_line(runs, tmp_path, command):
    bad = ["--images", "0,50"] if command == "interpolate" else ["--site", "z7"]
    result = invoke(command, runs["two-layer"], "--out", tmp_path / "x.png", *bad, "--device", "cpu")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("pyrovae: error:") and ("z2, z1" in result.stderr or "0 to 49" in result.stderr)
    assert not (tmp_path / "x.png").exists()


def test_interpolation_ends_are_the_reconstructions_and_slerp_keeps_the_norm(runs):
    run = load_run(runs["amortized"], "cpu")
    pair = rows_of(run.data.test, [3, 7])
    ends = plots.reconstructions(run.vae, pair)
    for spherical in (False, True):
        path = plots.interpolation(run.vae, pair, None, 5, spherical)
        torch.testing.assert_close(path[[0, -1]], ends, rtol=1e-5, atol=1e-6)
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 3.0])
    assert torch.allclose(plots._path(a, b, 5, True).norm(dim=1), torch.full((5,), 3.0))   # slerp: on the sphere
    assert plots._path(a, b, 5, False)[2].norm() == pytest.approx(3 / math.sqrt(2))      # the chord's middle


def test_traversal_moves_one_unit_from_the_prior_mean(runs):
    run = load_run(runs["amortized"], "cpu")
    template = rows_of(run.data.test, [0])
    prior = plots.prior_moments(run.vae, template)["z"]
    swept = plots.traversal(run.vae, template, "z", [0, 2], [-3.0, 0.0, 3.0])
    at_mean = plots.decoded(run.vae, {"z": prior[0][None]}, template)
    torch.testing.assert_close(swept[[1, 4]], at_mean.expand(2, -1))   # v = 0: every unit at the prior mean
    plus = prior[0].clone()
    plus[2] += 3 * prior[1][2]
    torch.testing.assert_close(swept[5:6], plots.decoded(run.vae, {"z": plus[None]}, template))
