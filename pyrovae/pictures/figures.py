"""Pictures rendered to PNG: image grids, training curves and 2-D scatter plots.

Drawn by the libraries: torchvision's ``make_grid`` tiles a grid's images, Pillow writes its caption
and row labels, matplotlib draws the curves and scatter plots. All text is in DejaVu Sans,
matplotlib's font, which the grids read from matplotlib's own font files: it has the minus sign,
Greek letters and arrows that Pillow's default font lacks. matplotlib (half a second to import) and
torchvision (one to three seconds, as it imports ``torch._dynamo``; a few tenths where that is
loaded already, as in ``fit``) are imported by the pictures that need them, not with this module;
the grids never import matplotlib. Every PNG is written through :func:`~pyrovae.core.files.atomic_path`: an existing file
is replaced only on success.

Library-safe: no ``matplotlib.pyplot``, no backend choice, no change to rcParams, loggers or RNGs
(a fixed style applies inside ``matplotlib.rc_context``). Sizes are deterministic (pixels):
``training_curves`` is always ``CURVES_SIZE``, ``scatter`` always ``SCATTER_SIZE``,
``evaluation_figure`` always ``EVALUATION_SIZE``; the grids grow
with the number and size of the images, see ``grid_figure_size``.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import itertools
import math
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..core.errors import UsageError
from ..core.files import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["DPI", "CURVES_SIZE", "SCATTER_SIZE", "MIN_GRID_WIDTH", "MAX_PIXELS", "grid_figure_size",
           "grid_capacity", "reconstruction_figure", "sample_grid", "labelled_rows", "training_curves", "scatter",
           "EVALUATION_SIZE", "evaluation_figure"]

DPI = 100
CURVES_SIZE = (1400, 800)  # pixels (width, height) of training_curves
SCATTER_SIZE = (800, 640)  # pixels of scatter
EVALUATION_SIZE = (1400, 640)  # pixels of evaluation_figure
MIN_GRID_WIDTH = 400  # pixels: narrow grids are centred on a figure at least this wide
MAX_PIXELS = 30000  # per side of a grid: larger ones are unreadable (and take gigabytes)

# the image grids, in pixels
_MARGIN = 12
_GAP = 6  # between images in a row; each image's 1-pixel grey frame and 2 pixels of white sit in it
_PAIR_GAP = 4  # between an original row and its reconstruction row
_BLOCK_GAP = 20  # between one original/reconstruction pair of rows and the next
_LABEL_PAD = 10  # between a row label and its images
_LABEL_COLUMN = 130  # row labels ("reconstruction" is 108 px wide; "z[49]  0.123" about 95) and their padding
_CAPTION_LINE = 21  # pixels per line of caption
_CAPTION_PX = _LABEL_PX = 15  # font sizes
_FRAME = 199  # light grey frame around each image

# matplotlib figures (training_curves, scatter)
_CAPTION_PT = 12.0
_TRAIN_COLOR = "tab:blue"
_TEST_COLOR = "tab:orange"
_LR_COLOR = "tab:green"
_VALIDATION_COLOR = "tab:purple"
_WARMUP_COLOR = "0.55"
_MANY_POINTS = 40  # series with at most this many points get markers
_PANELS = (("ELBO", "elbo", "ELBO (nats per datapoint)"),  # title, key in the records, y label
           ("reconstruction term log p(x|z)", "reconstruction", "log p(x|z) (nats per datapoint)"),
           ("KL(q(z|x) ‖ p(z))", "kl", "KL (nats per datapoint)"))

_STYLE = {
    "font.size": 10.5, "axes.titlesize": 12, "axes.titleweight": "bold", "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "legend.fontsize": 10.5,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "axes.spines.top": False, "axes.spines.right": False,
    "figure.facecolor": "white", "savefig.facecolor": "white", "savefig.transparent": False, "text.usetex": False,
    "savefig.bbox": "standard",  # never "tight": the size of the PNG must not depend on its contents
}

# found without importing matplotlib
_DEJAVU = Path(importlib.util.find_spec("matplotlib").origin).parent / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"

ArrayLike = Any  # a torch.Tensor, a numpy array, or nested sequences of numbers


# ------------------------------------------------------------------------------------------------
# shared


@contextlib.contextmanager
def _png(path: str | Path) -> Iterator[IO[bytes]]:
    """A file to write a PNG into, which replaces PATH when the block succeeds."""
    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as handle:
        yield handle


def _array(x: ArrayLike, name: str) -> np.ndarray:
    """X (a tensor on any device, an array, nested sequences) as float64 numbers."""
    try:
        return np.asarray(x.detach().cpu().double() if hasattr(x, "detach") else x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise UsageError(f"{name}: expected numbers, got {type(x).__name__} ({error})") from None


@functools.cache
def _font(pixels: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(_DEJAVU, pixels)


def _wrap(text: str, pixels: int, width: float) -> list[str]:
    """TEXT in the fewest lines textwrap makes of it with none wider than WIDTH in DejaVu Sans at PIXELS."""
    font = _font(pixels)
    for chars in range(len(text), 1, -1):
        lines = textwrap.wrap(text, chars)
        if all(font.getlength(line) <= width for line in lines):
            return lines
    return textwrap.wrap(text, 1)


# ------------------------------------------------------------------------------------------------
# image grids: make_grid and Pillow


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        channels, height, width = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise UsageError(f"image_shape must be (C, H, W), got {image_shape!r}") from None
    if channels not in (1, 3) or height < 1 or width < 1:
        raise UsageError(f"image_shape must be (C, H, W) with C 1 or 3, got {tuple(image_shape)}")
    return channels, height, width


def _check_ncols(ncols: int) -> int:
    if int(ncols) != ncols or ncols < 1:
        raise UsageError(f"ncols must be a positive integer, got {ncols!r}")
    return int(ncols)


def _images(x: ArrayLike, image_shape: Sequence[int], name: str) -> np.ndarray:
    """X as [n, C, H, W] float64, checked: n >= 1, C*H*W finite values per image."""
    size = math.prod(_check_shape(image_shape))
    x = _array(x, name)
    if x.ndim < 2 or len(x) == 0:
        raise UsageError(f"{name}: expected [n, {size}] with n >= 1, got shape {x.shape}")
    if x[0].size != size:
        raise UsageError(f"{name}: {x[0].size} values per image, but image_shape {tuple(image_shape)} needs {size}")
    if not np.isfinite(x).all():
        raise UsageError(f"{name}: contains NaN or infinite values")
    return x.reshape(len(x), *_check_shape(image_shape))


def _scale(height: int, width: int) -> int:
    """Integer magnification: small images (28 px MNIST, 32 px CIFAR) shown at about 90 px."""
    return max(1, 96 // max(height, width))


def _layout(n: int, image_shape: Sequence[int], ncols: int, caption_lines: int,
            reconstructions: bool, labelled: bool = False) -> tuple[int, int, int, list[int]]:
    """(width, height, x of the first column, y of each row of images) of a grid figure, in pixels:
    pairs of rows with ``reconstructions``, a label column with ``labelled`` (or ``reconstructions``)."""
    _, height, width = _check_shape(image_shape)
    if n < 1:
        raise UsageError(f"n must be at least 1, got {n}")
    ncols = min(_check_ncols(ncols), n)
    cell_h, cell_w = height * _scale(height, width), width * _scale(height, width)
    left = _LABEL_COLUMN if reconstructions or labelled else 0
    rows = math.ceil(n / ncols)
    gaps = [_PAIR_GAP, _BLOCK_GAP] * rows if reconstructions else [_GAP] * rows
    grid_w = ncols * (cell_w + _GAP) - _GAP
    page_w = max(MIN_GRID_WIDTH, 2 * _MARGIN + left + grid_w)
    first = _MARGIN + caption_lines * _CAPTION_LINE + (_MARGIN if caption_lines else 0)
    tops = list(itertools.accumulate((cell_h + gap for gap in gaps[:-1]), initial=first))
    page_h = tops[-1] + cell_h + _MARGIN
    return page_w, page_h, _MARGIN + left + (page_w - 2 * _MARGIN - left - grid_w) // 2, tops


def grid_figure_size(n: int, image_shape: Sequence[int], ncols: int = 8, caption_lines: int = 0,
                     reconstructions: bool = False, labelled: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of ``sample_grid`` of N images, with ``reconstructions`` of
    ``reconstruction_figure`` of N pairs, with ``labelled`` of ``labelled_rows`` of N images NCOLS a
    row, whose caption wraps to CAPTION_LINES lines (0: no caption).

    Images are magnified by ``s = max(1, 96 // max(H, W))`` and laid out in ``c = min(ncols, n)``
    columns 6 px apart, with 12 px margins; reconstruction and labelled figures add a 130 px label
    column. A line of caption is 21 px (plus 12 px below the caption).
    """
    return _layout(n, image_shape, ncols, caption_lines, reconstructions, labelled)[:2]


def grid_capacity(image_shape: Sequence[int], ncols: int = 8, caption_lines: int = 4,
                  reconstructions: bool = False) -> int:
    """The most images (pairs, with ``reconstructions``) one grid of ``grid_figure_size`` holds
    within ``MAX_PIXELS`` a side: what a command checks its N against before any work."""
    fits = lambda n: max(grid_figure_size(n, image_shape, ncols, caption_lines, reconstructions)) <= MAX_PIXELS
    low, high = 0, 1
    while fits(high):
        low, high = high, 2 * high
    while high - low > 1:   # fits(low), not fits(high)
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


def _tiles(images: np.ndarray, ncols: int) -> np.ndarray:
    """IMAGES [n, C, H, W] (values clipped to [0, 1], times 255) magnified (nearest), each in a grey
    frame with 2 px of white around it, NCOLS a row: [h, w] (grey) or [h, w, 3] bytes. The pixels are
    prepared with numpy: torch's thread pool costs more than it saves on arrays this small."""
    from torchvision.utils import make_grid  # deferred: torchvision imports torch._dynamo (1-3 s unless loaded)

    scale = _scale(*images.shape[-2:])
    big = np.rint(np.clip(images, 0, 1) * 255).astype(np.uint8).repeat(scale, axis=2).repeat(scale, axis=3)
    framed = np.pad(np.pad(big, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=_FRAME),
                    ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=255)
    grid = make_grid(torch.from_numpy(framed), nrow=ncols, padding=0, pad_value=255).numpy()
    return grid[0] if images.shape[1] == 1 else grid.transpose(1, 2, 0)


def _grid(blocks: list[np.ndarray], n: int, image_shape: Sequence[int], ncols: int, *, caption: str,
          path: str | Path, labels: Sequence[str] = (), paired: bool = False) -> None:
    """BLOCKS of images (each tiled NCOLS a row) at the rows of ``_layout`` of N images (N pairs if
    ``paired``), on a white page; CAPTION centred on top, LABELS right-aligned left of the rows."""
    lines = _caption_lines(caption, _layout(n, image_shape, ncols, 0, paired, bool(labels))[0])
    width, height, left, tops = _layout(n, image_shape, ncols, len(lines), paired, bool(labels))
    if max(width, height) > MAX_PIXELS:
        raise UsageError(f"a {width}x{height}-pixel figure is too large to draw (at most {MAX_PIXELS} per side); "
                         "pass fewer images or more columns")
    page = Image.new("L" if image_shape[0] == 1 else "RGB", (width, height), "white")
    for top, images in zip(tops, blocks):
        page.paste(Image.fromarray(_tiles(images, ncols)), (left - 3, top - 3))
    draw = ImageDraw.Draw(page)
    for i, line in enumerate(lines):
        draw.text((width / 2, _MARGIN + (i + 0.5) * _CAPTION_LINE), line, fill="black", font=_font(_CAPTION_PX),
                  anchor="mm")
    cell_h = image_shape[1] * _scale(*image_shape[1:])
    for top, label in zip(tops, labels):
        draw.text((left - _LABEL_PAD, top + cell_h / 2), label, fill="#262626", font=_font(_LABEL_PX), anchor="rm")
    with _png(path) as handle:
        page.save(handle, format="PNG")


def _caption_lines(caption: str, width: int) -> list[str]:
    return _wrap(caption, _CAPTION_PX, width - 2 * _MARGIN)


def reconstruction_figure(originals: ArrayLike, reconstructions: ArrayLike, image_shape: Sequence[int],
                          path: str | Path, caption: str = "", ncols: int = 8) -> None:
    """Originals [n, D] above their reconstructions [n, D] (values in [0, 1], D = C*H*W, C 1 or 3).

    Each row of up to NCOLS originals is followed by the row of their reconstructions; the rows are
    labelled "original" / "reconstruction" on the left and CAPTION (wrapped if long) sits on top.
    Grey images for C = 1, each image magnified by a whole factor (28 px MNIST digits at 84 px).
    """
    x = _images(originals, image_shape, "originals")
    x_hat = _images(reconstructions, image_shape, "reconstructions")
    if x.shape != x_hat.shape:
        raise UsageError(f"originals and reconstructions differ in number: {len(x)} vs {len(x_hat)}")
    ncols = _check_ncols(ncols)
    rows = [row for i in range(0, len(x), ncols) for row in (x[i:i + ncols], x_hat[i:i + ncols])]
    _grid(rows, len(x), image_shape, ncols, caption=caption, path=path,
          labels=("original", "reconstruction") * (len(rows) // 2), paired=True)


def sample_grid(images: ArrayLike, image_shape: Sequence[int], path: str | Path, caption: str = "",
                ncols: int = 8) -> None:
    """A grid of images [n, D] (values in [0, 1]), NCOLS per row, with CAPTION on top."""
    x = _images(images, image_shape, "images")
    _grid([x], len(x), image_shape, _check_ncols(ncols), caption=caption, path=path)


def labelled_rows(rows: Sequence[ArrayLike], labels: Sequence[str], image_shape: Sequence[int], path: str | Path,
                  caption: str = "") -> None:
    """Rows of images, each [m, D] (values in [0, 1]; every row as long), one LABEL left of each
    and CAPTION on top: a latent traversal (a row per unit) or interpolation (a row per pair)."""
    blocks = [_images(row, image_shape, f"row {i}") for i, row in enumerate(rows)]
    if not blocks or len(labels) != len(blocks) or len({len(block) for block in blocks}) != 1:
        raise UsageError(f"expected one label per row and rows of equal length, got {len(labels)} labels for rows "
                         f"of {[len(block) for block in blocks]} images")
    ncols = len(blocks[0])
    _grid(blocks, ncols * len(blocks), image_shape, ncols, caption=caption, path=path, labels=list(labels))


# ------------------------------------------------------------------------------------------------
# matplotlib


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Matplotlib's default style plus ``_STYLE``, whatever the caller configured; restored on exit."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # leaves the backend alone; rc_context restores everything else
        matplotlib.rcParams.update(_STYLE)
        yield


def _new_figure(size: tuple[int, int], layout: str | None = None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # + 0.01 px: figsize * dpi must not fall a float tick short of the integer (older Agg truncates)
    figure = Figure(figsize=((size[0] + 0.01) / DPI, (size[1] + 0.01) / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | Path) -> None:
    with _png(path) as handle:
        figure.savefig(handle, format="png", dpi=DPI)


def _pixels(points: float) -> int:
    return round(points * DPI / 72)


# ------------------------------------------------------------------------------------------------
# training curves


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise UsageError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{key}: expected a number, got {value!r}") from None


def _series(records: list[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([_number(record, key) for record in records], dtype=np.float64)


def _by_epoch(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per epoch (the last one written wins, as after a resumed run), sorted by epoch."""
    latest: dict[int, Mapping[str, Any]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise UsageError(f"record {i}: expected a dict, got {type(record).__name__}")
        epoch = _number(record, "epoch")
        if not math.isfinite(epoch) or epoch != int(epoch):
            raise UsageError(f"record {i}: 'epoch' must be an integer, got {record.get('epoch')!r}")
        latest[int(epoch)] = record
    if not latest:
        raise UsageError("no records to plot")
    return [latest[epoch] for epoch in sorted(latest)]


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where MASK is true."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _plot(axes: Any, x: np.ndarray, y: np.ndarray, color: str, label: str) -> bool:
    keep = np.isfinite(x) & np.isfinite(y)
    few = keep.sum() <= _MANY_POINTS
    if keep.any():
        axes.plot(x[keep], y[keep], color=color, label=label, linewidth=1.6 if few else 1.3,
                  marker="o" if few else None, markersize=6 if keep.sum() == 1 else 3.5)
    return bool(keep.any())


def _short(value: float) -> str:
    """3 significant digits, exponents without padding: 0.001, 6.11e-4."""
    mantissa, e, exponent = f"{value:.3g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if e else mantissa


def _say(axes: Any, message: str) -> None:
    """An empty panel: MESSAGE in its middle instead of meaningless 0..1 ticks."""
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", color="0.4",
              parse_math=False)
    axes.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)
    axes.grid(False)


def _zoom(top: Any, bottom: Any, epochs: np.ndarray, values: list[np.ndarray]) -> None:
    """Y limits that ignore a first-epochs transient dwarfing the rest of a run of 10+ epochs, with
    a note of the epochs this leaves off-scale; autoscaled otherwise."""
    stacked = np.vstack(values)
    tail = stacked[:, len(epochs) // 10:]
    if len(epochs) < 10 or not np.isfinite(tail).any():
        return
    low, high = np.nanmin(tail), np.nanmax(tail)
    if np.nanmax(stacked) - np.nanmin(stacked) <= 4 * max(high - low, 1e-12):
        return
    pad = 0.15 * max(high - low, 1e-6)
    low, high = low - pad, high + pad
    top.set_ylim(low, high)
    for outside, extreme, y, va, word in (((stacked < low).any(0), np.nanmin(stacked), 0.03, "bottom", "down"),
                                          ((stacked > high).any(0), np.nanmax(stacked), 0.97, "top", "up")):
        if outside.any():
            first, last = int(epochs[outside][0]), int(epochs[outside][-1])
            which = f"epoch {first}" if first == last else f"epochs {first}–{last}"
            value = f"{extreme:.4g}".replace("-", "\u2212")  # the minus sign of the tick labels
            note = f"y zoomed: {which} off-scale ({word} to {value})"
            for axes in (top, bottom):
                axes.text(0.97, y, note, transform=axes.transAxes, ha="right", va=va, fontsize=8.5, color="0.3",
                          bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
                          parse_math=False)


def curve_series(records: list[Mapping[str, Any]], key: str) -> list[tuple[str, str, np.ndarray]]:
    """The lines of one panel of :func:`training_curves` (key: elbo, reconstruction or kl), as
    (label, colour, values per epoch): train always; test and validation where the records have
    them (a run with ``--validation`` selects its checkpoint on the validation line)."""
    series = [("train", _TRAIN_COLOR, _series(records, f"train_{key}"))]
    for label, colour in (("test", _TEST_COLOR), ("validation", _VALIDATION_COLOR)):
        values = _series(records, f"{label}_{key}")
        if np.isfinite(values).any():
            series.append((label, colour, values))
    return series


def training_curves(records: Iterable[Mapping[str, Any]], path: str | Path, caption: str = "") -> int:
    """ELBO, reconstruction term and KL (train, test and validation) of a run, against epoch and
    against minutes.

    RECORDS are the per-epoch dicts of a run's metrics.jsonl (epoch, beta, lr, train_seconds,
    eval_seconds, train_elbo, train_reconstruction, train_kl, and optional test_elbo,
    test_reconstruction, test_kl, validation_elbo, ...; absent or None values are skipped). Epochs where beta is below its
    final value are shaded as KL warm-up; a varying learning rate gets its own (log-scale) column.
    When a record is repeated for an epoch, the last one counts. Returns the number of epochs plotted.
    The layout is fixed (no layout engine: it would double the drawing time).
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    records = _by_epoch(records)
    epochs, beta, lr = (_series(records, key) for key in ("epoch", "beta", "lr"))
    seconds = sum(np.where(np.isfinite(t) & (t > 0), t, 0.0)
                  for t in (_series(records, "train_seconds"), _series(records, "eval_seconds")))
    minutes = np.cumsum(seconds) / 60.0
    starts = np.concatenate([[0.0], minutes[:-1]])  # minute at which each epoch began
    timed = minutes[-1] > 0
    final_beta = beta[np.isfinite(beta)][-1] if np.isfinite(beta).any() else math.nan
    warmup = _spans(beta < final_beta - 1e-12)  # (NaN compares false)
    rates = lr[np.isfinite(lr) & (lr > 0)]
    lr_varies = int(rates.size > 1 and rates.max() > rates.min() * (1 + 1e-9))  # a column, or none
    # a column per quantity: title, y label, its lines (label, colour, values), what it says when empty
    columns = [(title, ylabel, curve_series(records, key), f"no train_{key} or test_{key} in the records")
               for title, key, ylabel in _PANELS]
    columns += [("learning rate", "learning rate (log scale)",
                 [("learning rate", _LR_COLOR, np.where(lr > 0, lr, np.nan))], "")] * lr_varies
    title_px = _pixels(_CAPTION_PT + 1)
    lines = _wrap(caption, title_px, CURVES_SIZE[0] - 4 * _MARGIN)
    header = 70 + len(lines) * round(1.25 * title_px)  # pixels above the panels' titles: caption, legend
    with _style():
        figure = _new_figure(CURVES_SIZE)
        grid = figure.subplots(2, len(columns), sharey="col", squeeze=False, gridspec_kw={
            "width_ratios": [1.0] * len(_PANELS) + [0.8] * lr_varies, "left": 0.062, "right": 0.99,
            "bottom": 0.065, "top": 1 - header / CURVES_SIZE[1], "wspace": 0.32, "hspace": 0.3})
        for (title, ylabel, series, empty), (top, bottom) in zip(columns, grid.T):
            for axes, x, spans in ((top, epochs, [(epochs[a] - 1, epochs[b - 1]) for a, b in warmup]),
                                   (bottom, minutes, [(starts[a], minutes[b - 1]) for a, b in warmup])):
                axes.set_ylabel(ylabel)
                if axes is bottom and not timed:
                    _say(axes, "no timings in the records")
                    continue
                if not any([_plot(axes, x, y, colour, label) for label, colour, y in series]):
                    _say(axes, empty)
                for span in spans:  # epoch e is trained during [e - 1, e]
                    axes.axvspan(*span, color=_WARMUP_COLOR, alpha=0.18, linewidth=0)
            top.set_title(title, parse_math=False)
            top.set_xlim(epochs[0] - 1, epochs[-1] + max(0.5, 0.02 * (epochs[-1] - epochs[0] + 1)))
            top.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            top.set_xlabel("epoch")
            bottom.set_xlabel("minutes (train + eval)")
            if timed:
                bottom.set_xlim(0, minutes[-1] * 1.03)
            if empty:  # an ELBO term: zoomed past a first-epochs transient
                _zoom(top, bottom, epochs, [y for _, _, y in series])
            for axes in (top, bottom)[:0 if empty else 2]:  # the learning rate: a log scale
                axes.set_yscale("log")
                if rates.max() < 10 * rates.min():  # less than a decade: label ticks plainly
                    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                    axes.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))

        handles = [Line2D([], [], color=colour, linewidth=2, label=label)
                   for label, colour in dict.fromkeys((label, colour) for _, _, series, _ in columns[:len(_PANELS)]
                                                      for label, colour, _ in series)]
        if warmup:
            where = (f"epochs {int(epochs[warmup[0][0]])}–{int(epochs[warmup[0][1] - 1])}"
                     if len(warmup) == 1 else f"{sum(b - a for a, b in warmup)} epochs")
            handles.append(Patch(color=_WARMUP_COLOR, alpha=0.3, label=f"KL warm-up: β < {final_beta:g} ({where})"))
        if lr_varies:
            handles.append(Line2D([], [], color=_LR_COLOR, linewidth=2,
                                  label=f"learning rate {_short(rates[0])} → {_short(rates[-1])}"))
        elif rates.size:
            handles.append(Line2D([], [], linestyle="none", label=f"learning rate {_short(rates[0])} (constant)"))
        # the caption is the legend's title, centred above its entries
        legend = figure.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 1.0), ncols=len(handles),
                               frameon=False, handlelength=2.2, columnspacing=2.5)
        if lines:
            legend.set_title("\n".join(lines), prop={"size": _CAPTION_PT + 1})
            legend.get_title().set_parse_math(False)
        _save(figure, path)
    return len(records)


# ------------------------------------------------------------------------------------------------
# scatter plots


def _label_order(label: Any) -> tuple[int, float, str]:
    """Numbers in numeric order (2 before 10), then the other labels alphabetically."""
    try:
        value = float(label)
    except (TypeError, ValueError):
        return (1, 0.0, str(label))
    return (0, value, str(label)) if math.isfinite(value) else (1, 0.0, str(label))


def _colours(k: int) -> list[Any]:
    import matplotlib

    if k <= 20:
        return [matplotlib.colormaps["tab10" if k <= 10 else "tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["turbo"](i / (k - 1)) for i in range(k)]


def _points(xy: ArrayLike, label: Any) -> np.ndarray:
    xy = _array(xy, f"group {label!r}")
    xy = xy.reshape(0, 2) if xy.size == 0 else xy
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise UsageError(f"group {label!r}: expected [n, 2] points, got shape {xy.shape}")
    return xy


def _literal(label: Any) -> str:
    """A data label shown as it is (a '$' would otherwise start mathtext)."""
    return str(label).replace("$", r"\$")


def scatter(groups: Mapping[Any, ArrayLike], path: str | Path, title: str = "", xlabel: str = "",
            ylabel: str = "", legend: str = "group") -> None:
    """Points [n, 2] per group (label -> points), one colour per group and a legend titled
    LEGEND (what the groups are, e.g. "label").

    Colours follow the sorted labels (numeric labels numerically: digit classes 0..9 always get the
    same tab10 colours). All groups are drawn in one shuffled layer (fixed private seed), so no group
    hides another just because it came later. Marker size and opacity shrink as points multiply.
    """
    from matplotlib.lines import Line2D

    if not isinstance(groups, Mapping) or not groups:
        raise UsageError("groups must be a non-empty dict: label -> [n, 2] points")
    labels = sorted(groups, key=_label_order)
    points = [_points(groups[label], label) for label in labels]
    xy = np.concatenate(points)
    colours = _colours(len(labels))
    colour_index = np.repeat(np.arange(len(points)), [len(p) for p in points])
    order = np.random.default_rng(0).permutation(len(xy))  # a private generator: global RNGs untouched
    size, alpha = (14, 0.85) if len(xy) <= 1000 else (5, 0.6) if len(xy) <= 10000 else (1.5, 0.35)
    with _style():
        figure = _new_figure(SCATTER_SIZE, layout="constrained")  # it fits the legend beside the points
        axes = figure.add_subplot()
        if len(xy):
            axes.scatter(xy[order, 0], xy[order, 1], s=size, c=np.array(colours)[colour_index[order]], alpha=alpha,
                         linewidths=0)
        handles = [Line2D([], [], linestyle="none", marker="o", markersize=7, color=colour,
                          label=f"{_literal(label)}  ({len(p)})")
                   for label, colour, p in zip(labels, colours, points)]
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    frameon=False, handletextpad=0.3, title=f"{_literal(legend)} (points)")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if title:
            lines = _wrap(title, _pixels(_CAPTION_PT), SCATTER_SIZE[0] - 4 * _MARGIN)
            figure.suptitle("\n".join(lines), fontsize=_CAPTION_PT, parse_math=False)
        _save(figure, path)


# ------------------------------------------------------------------------------------------------
# an evaluation at a glance


def evaluation_figure(log_px: ArrayLike, elbo: ArrayLike | None, khat: ArrayLike | None, path: str | Path,
                      caption: str = "", khat_bad: float = 0.7) -> None:
    """Two panels of one evaluation's per-point values: log p̂(x_i) against the proposal's ELBO_i
    (with the line log p̂ = ELBO: log p ≥ ELBO, so points fall above it unless the estimate is
    poor; red where k-hat > KHAT_BAD), and the histogram of PSIS k-hat with 0.5 and KHAT_BAD
    marked. A panel without its values (no ELBO, or k-hat unknown) says so. Always ``EVALUATION_SIZE``."""
    y = _array(log_px, "log_px").reshape(-1)
    x = None if elbo is None else _array(elbo, "elbo").reshape(-1)
    k = None if khat is None else _array(khat, "khat").reshape(-1)
    for name, values in (("elbo", x), ("khat", k)):
        if values is not None and len(values) != len(y):
            raise UsageError(f"{name}: {len(values)} values for {len(y)} points")
    known = None if k is None or not np.isfinite(k).any() else np.isfinite(k)
    with _style():
        figure = _new_figure(EVALUATION_SIZE, layout="constrained")
        left, right = figure.subplots(1, 2)
        left.set_title("per point: log p̂(x) against the ELBO")
        if x is None:
            _say(left, "no per-point ELBO for this estimator")
        else:
            bad = np.zeros(len(y), bool) if known is None else np.where(known, k > khat_bad, False)
            for mask, colour, label in ((~bad, _TRAIN_COLOR, f"k-hat ≤ {khat_bad}" if known is not None else "points"),
                                        (bad, "tab:red", f"k-hat > {khat_bad}")):
                if mask.any():
                    left.scatter(x[mask], y[mask], s=10, alpha=0.6, color=colour, linewidths=0,
                                 label=f"{label} ({int(mask.sum())})")
            finite = np.isfinite(x) & np.isfinite(y)
            if finite.any():
                low, high = min(x[finite].min(), y[finite].min()), max(x[finite].max(), y[finite].max())
                left.plot([low, high], [low, high], color=_WARMUP_COLOR, linewidth=1, label="log p̂ = ELBO")
            left.set_xlabel("ELBO of the proposal (nats)")
            left.set_ylabel("log p̂(x) (nats)")
            left.legend(loc="upper left", frameon=False)
        right.set_title("PSIS k-hat of the importance weights")
        if known is None:
            _say(right, "k-hat unknown (too few draws per point to fit a tail)")
        else:
            from matplotlib.ticker import MaxNLocator

            right.hist(k[known], bins=40, color=_TRAIN_COLOR, alpha=0.8)
            right.yaxis.set_major_locator(MaxNLocator(integer=True))   # counts of points
            for line, style in ((0.5, ":"), (khat_bad, "--")):
                right.axvline(line, color="tab:red", linestyle=style, linewidth=1.2, label=f"k-hat = {line}")
            right.set_xlabel("k-hat")
            right.set_ylabel("points")
            right.legend(loc="upper right", frameon=False)
        if caption:
            lines = _wrap(caption, _pixels(_CAPTION_PT), EVALUATION_SIZE[0] - 4 * _MARGIN)
            figure.suptitle("\n".join(lines), fontsize=_CAPTION_PT, parse_math=False)
        _save(figure, path)
