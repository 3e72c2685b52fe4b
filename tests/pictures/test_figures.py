"""pyrovae.figures: valid PNGs of deterministic size, atomic writes, and no global side effects."""
import logging
import math
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from pyrovae.core.errors import UsageError
from pyrovae.pictures import figures, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MNIST = (1, 28, 28)


def png_size(path):
    """(width, height) from the IHDR chunk, after checking the signature; PIL must decode it too."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as image:
        image.load()
        assert image.size == (width, height)
    return width, height


def only(tmp_path, name):
    """TMP_PATH holds NAME and nothing else: no temporary file left behind."""
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]
    return tmp_path / name


def blobs(n, shape=MNIST, seed=0):
    """MNIST-like images: a bright blob on a dark background, [n, C*H*W] in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    centre = torch.rand(n, 2, generator=g) * torch.tensor([h / 2, w / 2]) + torch.tensor([h / 4, w / 4])
    d2 = (yy - centre[:, :1, None]) ** 2 + (xx - centre[:, 1:, None]) ** 2
    images = torch.exp(-d2 / (2 * (h / 8) ** 2))[:, None].expand(n, c, h, w)
    return images.reshape(n, -1).contiguous()


def run_records(epochs=50, warmup=10, test_every=1):
    """Per-epoch dicts like a VAE run's metrics.jsonl: ELBO -200 -> -100, KL 20-30, warm-up, lr * 0.99."""
    records = []
    for e in range(1, epochs + 1):
        elbo = -100 - 100 * math.exp(-(e - 1) / 8)
        kl = 22 + 8 * math.exp(-(e - 1) / 10)
        record = dict(epoch=e, beta=min(1.0, e / warmup), lr=1e-3 * 0.99 ** (e - 1), train_seconds=20.0,
                      eval_seconds=2.5, train_elbo=elbo, train_reconstruction=elbo - kl, train_kl=kl)
        if e % test_every == 0:
            record.update(test_elbo=elbo - 2, test_reconstruction=elbo - kl - 2.5, test_kl=kl + 0.5)
        records.append(record)
    return records


# ---------------------------------------------------------------------------------------------
# sizes


def test_reconstruction_figure_writes_png_of_expected_size(tmp_path):
    x = blobs(16)
    figures.reconstruction_figure(x, (x * 0.8), MNIST, tmp_path / "recon.png",
                                  caption="runs/mnist · epoch 10 · bernoulli · test ELBO −101.9 nats")
    # 12 margin + 130 labels + 8 * 84 + 7 * 6 + 12 margin; 12 + (21 + 12) caption + 2 * (84 + 4 + 84) + 20 + 12
    assert png_size(only(tmp_path, "recon.png")) == (868, 421)
    assert figures.grid_figure_size(16, MNIST, 8, caption_lines=1, reconstructions=True) == (868, 421)


def test_reconstruction_figure_colour_numpy_and_image_shaped_input(tmp_path):
    x = blobs(12, (3, 32, 32)).numpy().reshape(12, 3, 32, 32)
    figures.reconstruction_figure(x, x[::-1], (3, 32, 32), str(tmp_path / "rgb.png"), ncols=6)
    assert png_size(only(tmp_path, "rgb.png")) == figures.grid_figure_size(12, (3, 32, 32), 6,
                                                                         reconstructions=True) == (760, 436)


def test_sample_grid_sizes(tmp_path):
    figures.sample_grid(blobs(64), MNIST, tmp_path / "samples.png", caption="64 samples")
    assert png_size(tmp_path / "samples.png") == (738, 771)  # 8 x 8 digits of 84 px, a one-line caption
    figures.sample_grid(blobs(10), MNIST, tmp_path / "ten.png")  # a partial second row
    assert png_size(tmp_path / "ten.png") == figures.grid_figure_size(10, MNIST, 8) == (738, 198)
    figures.sample_grid(blobs(3), MNIST, tmp_path / "three.png")  # narrow: centred on the minimum width
    assert png_size(tmp_path / "three.png") == (figures.MIN_GRID_WIDTH, 108)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.png", "ten.png", "three.png"]


def test_long_caption_wraps_instead_of_being_cut(tmp_path):
    caption = " · ".join(["runs/a-long-run-directory/mnist-bernoulli-latent16", "epoch 200", "bernoulli",
                          "test ELBO −101.9 nats", "IWAE-5000 −96.3 nats"])
    figures.sample_grid(blobs(3), MNIST, tmp_path / "s.png", caption=caption)
    width, height = png_size(tmp_path / "s.png")
    assert width == figures.MIN_GRID_WIDTH
    lines = (height - figures.grid_figure_size(3, MNIST)[1] - 12) // 21
    assert lines >= 3  # several lines, all within the figure width


def test_training_curves_size_and_epochs(tmp_path):
    assert figures.training_curves(run_records(), tmp_path / "curves.png", caption="runs/mnist") == 50
    assert png_size(only(tmp_path, "curves.png")) == figures.CURVES_SIZE == (1400, 800)


def test_training_curves_one_point_per_epoch_with_missing_test_keys(tmp_path):
    records = run_records(40, test_every=5)  # test metrics only every 5th epoch
    records[7]["test_elbo"] = None  # and sometimes None
    for record in records[:3]:
        del record["lr"]
    assert figures.training_curves(records, tmp_path / "c.png") == 40
    assert png_size(tmp_path / "c.png") == (1400, 800)


def test_training_curves_draw_the_validation_elbo_where_recorded(tmp_path):
    # a --validation run selects best.pt on the validation ELBO: its curve is drawn beside train and test
    records = run_records(10)
    assert [label for label, _, _ in figures.curve_series(records, "elbo")] == ["train", "test"]
    for r in records[2:]:
        r.update(validation_elbo=r["train_elbo"] - 1, validation_kl=r["train_kl"])
    labels = {key: [label for label, _, _ in figures.curve_series(records, key)] for key in ("elbo", "kl")}
    assert labels == {"elbo": ["train", "test", "validation"], "kl": ["train", "test", "validation"]}
    values = figures.curve_series(records, "elbo")[2][2]
    assert np.isnan(values[:2]).all() and values[2] == records[2]["validation_elbo"]
    assert figures.training_curves(records, tmp_path / "curves.png") == 10


def test_training_curves_one_epoch_and_many(tmp_path):
    assert figures.training_curves(run_records(1), tmp_path / "one.png") == 1
    assert figures.training_curves(run_records(400, warmup=1), tmp_path / "many.png") == 400
    assert png_size(tmp_path / "one.png") == png_size(tmp_path / "many.png") == (1400, 800)
    assert len(list(tmp_path.iterdir())) == 2


def test_training_curves_repeated_epochs_and_bare_records(tmp_path):
    # no beta, lr, timings or test metrics; out of order; epoch 2 written twice, as after a resume
    bare = [{"epoch": e, "train_elbo": -100.0 - e, "train_kl": None} for e in (3, 1, 2, 2)]
    assert figures.training_curves(iter(bare), tmp_path / "bare.png") == 3
    assert png_size(only(tmp_path, "bare.png")) == (1400, 800)


def test_scatter_size_and_stable_colours(tmp_path):
    rng = np.random.default_rng(0)
    groups = {d: rng.normal(d, 1.0, (50, 2)) for d in range(10)}
    figures.scatter(groups, tmp_path / "a.png", title="latent means", xlabel="$z_1$", ylabel="$z_2$")
    assert png_size(tmp_path / "a.png") == figures.SCATTER_SIZE == (800, 640)
    shuffled = {d: torch.as_tensor(groups[d]) for d in (3, 9, 0, 5, 1, 8, 2, 7, 4, 6)}
    figures.scatter(shuffled, tmp_path / "b.png", title="latent means", xlabel="$z_1$", ylabel="$z_2$")
    # colours follow the sorted labels and the drawing order is fixed: the same picture, byte for byte
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert figures._label_order(2) < figures._label_order("10") < figures._label_order("data")


def test_grid_pixels_are_exact_grey_or_rgb_in_grey_frames(tmp_path):
    x = blobs(10)
    figures.sample_grid(x, MNIST, tmp_path / "grey.png")
    with Image.open(tmp_path / "grey.png") as image:
        assert image.mode == "L"
        page = np.asarray(image)
    # no caption: the first digit sits at (12, 12), magnified 3x without smoothing, in a light grey frame
    digit = np.rint(x[0].reshape(28, 28).numpy() * 255).astype(np.uint8).repeat(3, 0).repeat(3, 1)
    assert np.array_equal(page[12:96, 12:96], digit)
    assert (page[11, 11:97] == 199).all() and (page[96, 11:97] == 199).all() and (page[11:97, 11] == 199).all()
    assert (page[:11] == 255).all() and (page[:, :11] == 255).all() and (page[-11:] == 255).all()
    rgb = blobs(2, (3, 32, 32))
    figures.reconstruction_figure(rgb, rgb.flip(0), (3, 32, 32), tmp_path / "rgb.png")
    with Image.open(tmp_path / "rgb.png") as image:
        assert image.mode == "RGB"
        page = np.asarray(image)
    grid_x = 12 + 130 + (400 - 24 - 130 - 2 * 96 - 6) // 2  # the grid is centred on the minimum width
    expected = np.rint(rgb[1].reshape(3, 32, 32).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.array_equal(page[12 + 96 + 4:12 + 96 + 4 + 96, grid_x:grid_x + 96], expected.repeat(3, 0).repeat(3, 1))


def test_caption_and_labels_stay_in_their_bands(tmp_path):
    caption = "runs/mnist-bernoulli-latent16 · epoch 200 · test ELBO −101.9 nats · IWAE-5000 −96.3 nats"
    figures.reconstruction_figure(blobs(3), blobs(3, seed=1), MNIST, tmp_path / "r.png", caption=caption)
    with Image.open(tmp_path / "r.png") as image:
        page = np.asarray(image.convert("L"))
    height, width = page.shape
    lines = figures._caption_lines(caption, width)
    assert len(lines) >= 2 and "−" in "".join(lines)  # wrapped; the font draws the minus sign itself
    font = figures._font(figures._CAPTION_PX)
    assert all(font.getlength(line) <= width - 24 for line in lines)
    assert (width, height) == figures.grid_figure_size(3, MNIST, caption_lines=len(lines), reconstructions=True)
    band = 12 + 21 * len(lines)  # the caption's lines, then 12 px of white above the images' frames
    ink = page < 128
    assert ink[12:band].any() and not ink[:12].any() and not ink[band:band + 11].any()
    assert not ink[:, :12].any() and not ink[:, -12:].any()  # nothing in the side margins
    grid_x = 12 + 130 + (width - 24 - 130 - 3 * 84 - 2 * 6) // 2
    labels = ink[band + 12:, :grid_x - 1]  # the label column, left of the first frame
    assert labels[:, -9:].sum() == 0  # 10 px between a label and the images
    # each label is centred on its row of images: 84 px tall, 4 px apart
    rows = np.flatnonzero(labels.any(axis=1))
    original, reconstruction = rows[rows < 84], rows[rows >= 88]
    assert abs((original.min() + original.max()) / 2 - 42) <= 4
    assert abs((reconstruction.min() + reconstruction.max()) / 2 - (88 + 42)) <= 4


def test_the_font_draws_the_characters_captions_use():
    """Minus signs, Greek letters, arrows and the like are drawn as themselves, never as the font's empty box."""
    font = figures._font(figures._CAPTION_PX)
    missing = font.getmask("\U0010fffd")  # a private-use code point: the font's "no glyph" box
    for char in "−β‖²é→≈×·–":
        mask = font.getmask(char)
        assert (mask.size, bytes(mask)) != (missing.size, bytes(missing)), char


def test_grids_do_not_import_matplotlib():
    """The figures a training run writes at its end must not pay for importing matplotlib."""
    code = """
import sys, tempfile, os
import pyrovae.pictures.figures as figures
assert "matplotlib" not in sys.modules, "import pyrovae.pictures.figures imported matplotlib"
with tempfile.TemporaryDirectory() as d:
    figures.sample_grid([[0.5] * 784] * 3, (1, 28, 28), os.path.join(d, "s.png"), caption="samples −1")
    figures.reconstruction_figure([[0.5] * 784] * 3, [[0.2] * 784] * 3, (1, 28, 28), os.path.join(d, "r.png"),
                                  caption="reconstructions")
    assert sorted(os.listdir(d)) == ["r.png", "s.png"]
assert "matplotlib" not in sys.modules, sorted(m for m in sys.modules if m.startswith("matplotlib"))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# which rows a picture shows


class _Guided:
    """A VAE as picture_rows sees it: whether its guide has an encoder."""

    def __init__(self, amortized):
        self.amortized = amortized

    def can(self, capability):
        return capability == "amortized" and self.amortized


def test_picture_rows_are_test_rows_with_an_encoder_else_training_rows_and_their_indices():
    test = (torch.arange(10.0).reshape(5, 2), torch.arange(5))
    train = (torch.arange(20.0).reshape(10, 2), torch.arange(10))
    rows, index, split = plots.picture_rows(_Guided(True), test, train, 3)
    assert split == "test" and index is None and torch.equal(rows[0], test[0][:3]) and torch.equal(rows[1], test[1][:3])
    pictured = plots.picture_rows(_Guided(False), test, train, 3)
    assert pictured.split == "train" and pictured.images == "training images"
    assert torch.equal(pictured.rows[0], train[0][:3]) and torch.equal(pictured.index, torch.arange(3))
    assert len(plots.picture_rows(_Guided(True), test, train, 64).rows[0]) == 5  # all there are


# ---------------------------------------------------------------------------------------------
# atomic writes


def test_failed_call_leaves_existing_file_intact(tmp_path):
    path = tmp_path / "recon.png"
    path.write_bytes(b"old picture")
    with pytest.raises(UsageError, match="differ in number"):
        figures.reconstruction_figure(blobs(4), blobs(3), MNIST, path)
    with pytest.raises(UsageError, match="values per image"):
        figures.sample_grid(blobs(4), (1, 14, 14), path)
    with pytest.raises(UsageError, match="epoch"):
        figures.training_curves([{"epoch": "one"}], path)
    with pytest.raises(UsageError, match="integer"):
        figures.training_curves([{"epoch": 1.5}], path)
    with pytest.raises(UsageError, match=r"\[n, 2\]"):
        figures.scatter({"a": np.zeros((5, 3))}, path)
    assert path.read_bytes() == b"old picture"
    only(tmp_path, "recon.png")


def test_failure_while_writing_removes_temporary_and_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "samples.png"
    path.write_bytes(b"old picture")

    def broken_save(self, handle, *args, **kwargs):
        handle.write(PNG_SIGNATURE + b"half a picture")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)  # the grids are written by Pillow
    with pytest.raises(OSError, match="disk full"):
        figures.sample_grid(blobs(4), MNIST, path)
    with pytest.raises(OSError, match="disk full"):
        figures.reconstruction_figure(blobs(4), blobs(4), MNIST, path)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken_save)  # the plots by matplotlib
    with pytest.raises(OSError, match="disk full"):
        figures.scatter({"a": np.zeros((3, 2))}, path)
    assert path.read_bytes() == b"old picture"
    only(tmp_path, "samples.png")
    monkeypatch.undo()
    figures.sample_grid(blobs(4), MNIST, path)  # success replaces it
    assert png_size(only(tmp_path, "samples.png"))[1] == 108


def test_new_file_gets_umask_permissions(tmp_path):
    status = Path("/proc/self/status")
    umask = next((int(line.split()[1], 8) for line in status.read_text().splitlines()
                  if line.startswith("Umask:")), None) if status.exists() else None
    if umask is None:
        pytest.skip("cannot read the umask without changing it")
    figures.sample_grid(blobs(2), MNIST, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("bad, match", [
    (dict(images=torch.full((2, 784), float("nan"))), "NaN"),
    (dict(images=torch.zeros(0, 784)), "n >= 1"),
    (dict(image_shape=(2, 28, 28)), "C 1 or 3"),
    (dict(ncols=0), "ncols"),
])
def test_bad_grid_input_raises_usage_error(tmp_path, bad, match):
    kwargs = dict(images=blobs(2), image_shape=MNIST, path=tmp_path / "s.png", ncols=8) | bad
    with pytest.raises(UsageError, match=match):
        figures.sample_grid(**kwargs)
    assert list(tmp_path.iterdir()) == []


def test_bad_records_raise_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no records"):
        figures.training_curves([], tmp_path / "c.png")
    with pytest.raises(UsageError, match="train_elbo"):
        figures.training_curves([{"epoch": 1, "train_elbo": "high"}], tmp_path / "c.png")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# no global side effects


def test_caller_state_unchanged_and_caller_style_ignored(tmp_path):
    backend = matplotlib.get_backend()
    loggers = {name: logging.getLogger(name).level for name in ("matplotlib", "matplotlib.font_manager", "PIL")}
    torch_rng, np_rng, py_rng = torch.get_rng_state(), np.random.get_state(), random.getstate()
    # the caller's own style, e.g. a tight bbox and a dark background, must neither leak in nor be undone
    with matplotlib.rc_context({"savefig.bbox": "tight", "figure.facecolor": "black", "font.size": 20.0}):
        before = dict(matplotlib.rcParams)
        figures.reconstruction_figure(blobs(4), blobs(4, seed=1), MNIST, tmp_path / "r.png", caption="c")
        figures.sample_grid(blobs(4), MNIST, tmp_path / "s.png", caption="c")
        figures.training_curves(run_records(12), tmp_path / "t.png", caption="c")
        figures.scatter({"a": np.zeros((3, 2)), "b": np.ones((3, 2))}, tmp_path / "p.png", title="c")
        assert dict(matplotlib.rcParams) == before
    assert matplotlib.get_backend() == backend
    assert {name: logging.getLogger(name).level for name in loggers} == loggers
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_rng))
    assert random.getstate() == py_rng
    assert png_size(tmp_path / "r.png") == figures.grid_figure_size(4, MNIST, caption_lines=1, reconstructions=True)
    assert png_size(tmp_path / "t.png") == (1400, 800)
    with Image.open(tmp_path / "t.png") as image:
        assert image.convert("RGB").getpixel((2, 2)) == (255, 255, 255)  # our white, not the caller's black


def test_module_never_imports_pyplot_nor_picks_a_backend():
    """figures.py draws without pyplot and leaves matplotlib's backend as the caller had it."""
    code = """
import sys, tempfile, os
import matplotlib
backend = matplotlib.rcParams._get_backend_or_none()
import pyrovae.pictures.figures as module
with tempfile.TemporaryDirectory() as d:
    module.scatter({"a": [[0.0, 1.0], [1.0, 0.0]]}, os.path.join(d, "p.png"))
    module.training_curves([{"epoch": 1, "train_elbo": -100.0}], os.path.join(d, "c.png"))
    module.sample_grid([[0.5] * 4], (1, 2, 2), os.path.join(d, "s.png"))
assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
assert matplotlib.rcParams._get_backend_or_none() == backend, "backend chosen"
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "MPLBACKEND": ""})
    assert result.returncode == 0, result.stderr
