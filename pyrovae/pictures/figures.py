"""Figures a user of a VAE looks at: reconstructions, sample grids, training curves, 2-D scatter plots.

Pure drawing functions: they take tensors, arrays or lists of dicts and write one PNG. The image grids
(``sample_grid``, ``reconstruction_figure``) are painted with Pillow and never import matplotlib, so
``import pyrovae.pictures.figures`` and the grids a training run writes at its end stay cheap; only
``training_curves`` and ``scatter`` import matplotlib, when called. Library-safe: no
``matplotlib.pyplot``, no ``matplotlib.use``, no global rcParams / logging / RNG changes (a fixed style
is applied inside ``matplotlib.rc_context``). Every PNG is written atomically: rendered into a
temporary file next to ``path`` and renamed over it, so an existing file is replaced only on success.

Sizes are deterministic (pixels at ``DPI``): ``training_curves`` is always ``CURVES_SIZE``, ``scatter``
always ``SCATTER_SIZE``; the image grids grow with the number and size of the images (at least
``MIN_GRID_WIDTH`` wide), see ``grid_figure_size``.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import IO, TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # matplotlib and Pillow are imported where they are used
    from matplotlib.figure import Figure
    from PIL import Image as PILImage
    from PIL import ImageFont

__all__ = [
    "DPI",
    "CURVES_SIZE",
    "SCATTER_SIZE",
    "MIN_GRID_WIDTH",
    "grid_figure_size",
    "reconstruction_figure",
    "sample_grid",
    "training_curves",
    "scatter",
]

DPI = 100
CURVES_SIZE = (1400, 800)  # pixels (width, height) of training_curves
SCATTER_SIZE = (800, 640)  # pixels of scatter
MIN_GRID_WIDTH = 400  # pixels: narrow grids are centred on a figure at least this wide
MAX_PIXELS = 30000  # per side; Agg cannot draw much larger figures (and grids that large are unreadable)

# layout of the image grids, in pixels
_MARGIN = 12
_GAP = 6  # between images in a row (a 1-pixel grey frame sits in it)
_PAIR_GAP = 4  # between an original row and its reconstruction row
_BLOCK_GAP = 20  # between one original/reconstruction pair of rows and the next
_LABEL_PAD = 10  # between a row label and its images
_LABEL_COLUMN = 130  # row labels ("reconstruction" is 108 px wide at 16 px) and their padding
_CAPTION_PX = 17  # font sizes (Pillow's default font), in pixels
_LABEL_PX = 16
_CAPTION_LINE = 21  # pixels per line of caption
_BACKGROUND = 255  # white
_FRAME = 199  # light grey frame around each image
_CAPTION_INK = 0
_LABEL_INK = 38
_PNG_COMPRESSION = 6  # zlib level of the grids' PNGs

# matplotlib figures (training_curves, scatter)
_CAPTION_PT = 12.0
_TRAIN_COLOR = "tab:blue"
_TEST_COLOR = "tab:orange"
_LR_COLOR = "tab:green"
_WARMUP_COLOR = "0.55"
_MANY_POINTS = 40  # series with at most this many points get markers

_STYLE = {
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 10.5,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "legend.fontsize": 10.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "savefig.bbox": "standard",  # never "tight": the size of the PNG must not depend on its contents
    "savefig.transparent": False,
    "text.usetex": False,
}

ArrayLike = Any  # a torch.Tensor, a numpy array, or nested sequences of numbers


# ------------------------------------------------------------------------------------------------
# shared machinery


@contextlib.contextmanager
def _style() -> Iterator[None]:
    """Matplotlib's default style plus ``_STYLE``, whatever the caller configured; restored on exit."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # leaves the backend alone; rc_context restores everything else
        matplotlib.rcParams.update(_STYLE)
        yield


def _check_size(width_px: int, height_px: int) -> None:
    if not (0 < width_px <= MAX_PIXELS and 0 < height_px <= MAX_PIXELS):
        raise ValueError(
            f"a {width_px}x{height_px}-pixel figure is too large to draw (at most {MAX_PIXELS} per side); "
            "pass fewer images or more columns")


def _new_figure(width_px: int, height_px: int, layout: str | None = None) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    _check_size(width_px, height_px)
    # + 0.01 px: figsize * dpi must not fall a float tick short of the integer (older Agg truncates)
    figure = Figure(figsize=((width_px + 0.01) / DPI, (height_px + 0.01) / DPI), dpi=DPI, layout=layout)
    FigureCanvasAgg(figure)
    return figure


def _write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> None:
    """WRITE a file into a temporary file beside PATH, then rename it over PATH (atomic on POSIX)."""
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    flags = os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        # secrets, not random: the caller's RNG state is left alone
        tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)  # the process umask applies, as for any new file
        except FileExistsError:
            continue
        break
    else:  # pragma: no cover - 100 collisions of 32 random bits
        raise FileExistsError(f"could not create a temporary file beside {path}")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _write_png(figure: Figure, path: str | os.PathLike[str]) -> None:
    """Render a matplotlib FIGURE into PATH, atomically."""
    _write_atomically(path, lambda handle: figure.savefig(handle, format="png", dpi=DPI))


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor (any device and dtype)
        x = x.detach().cpu().double().numpy()
    try:
        array = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name}: expected numbers, got {type(x).__name__} ({error})") from None
    return array


def _wrap_to(measure: Callable[[str], float], text: str, width_px: float) -> list[str]:
    """TEXT broken into lines no wider than WIDTH_PX, as MEASURE (text -> pixels) has it."""
    lines: list[str] = []
    for paragraph in text.splitlines() or [""]:
        line = ""
        for word in paragraph.split(" "):
            candidate = word if not line else f"{line} {word}"
            if line and measure(candidate) > width_px:
                lines.append(line)
                line = word
            else:
                line = candidate
            while measure(line) > width_px and len(line) > 1:  # a very long word
                cut = len(line) - 1
                while cut > 1 and measure(line[:cut]) > width_px:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _wrap(figure: Figure, text: str, points: float, width_px: float) -> list[str]:
    """TEXT broken into lines no wider than WIDTH_PX at POINTS (measured with the figure's renderer)."""
    from matplotlib.font_manager import FontProperties

    renderer = figure.canvas.get_renderer()
    font = FontProperties(size=points)

    def measure(line: str) -> float:
        width, _, _ = renderer.get_text_width_height_descent(line, font, ismath=False)
        return width

    return _wrap_to(measure, text, width_px)


def _escape(label: Any) -> str:
    """A data label shown literally (a '$' would otherwise start mathtext)."""
    return str(label).replace("$", r"\$")


# ------------------------------------------------------------------------------------------------
# image grids (Pillow only)


def _images(x: ArrayLike, image_shape: Sequence[int], name: str) -> np.ndarray:
    """X as [n, H, W] (grey) or [n, H, W, 3] (colour) bytes: values clipped to [0, 1], times 255."""
    channels, height, width = _check_shape(image_shape)
    array = _as_array(x, name)
    if array.ndim < 2 or array.shape[0] == 0:
        raise ValueError(f"{name}: expected [n, {channels * height * width}] with n >= 1, got shape {array.shape}")
    n = array.shape[0]
    if array[0].size != channels * height * width:
        raise ValueError(f"{name}: {array[0].size} values per image, but image_shape {tuple(image_shape)} "
                         f"needs {channels * height * width}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    array = np.rint(np.clip(array.reshape(n, channels, height, width), 0.0, 1.0) * 255).astype(np.uint8)
    return array[:, 0] if channels == 1 else array.transpose(0, 2, 3, 1)


def _check_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        channels, height, width = (int(s) for s in image_shape)
    except (TypeError, ValueError):
        raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}") from None
    if channels not in (1, 3) or height < 1 or width < 1:
        raise ValueError(f"image_shape must be (C, H, W) with C 1 or 3, got {tuple(image_shape)}")
    return channels, height, width


def _scale(height: int, width: int) -> int:
    """Integer magnification: small images (28 px MNIST, 32 px CIFAR) shown at about 90 px."""
    return max(1, 96 // max(height, width))


def _check_ncols(ncols: int) -> int:
    if int(ncols) != ncols or ncols < 1:
        raise ValueError(f"ncols must be a positive integer, got {ncols!r}")
    return int(ncols)


class _GridLayout:
    """Pixel positions of rows of images (top to bottom), a left label column and a caption band."""

    def __init__(self, figure_width: int, left: int, cell: tuple[int, int], ncols: int,
                 row_gaps: list[int], caption_lines: int) -> None:
        self.cell_h, self.cell_w = cell
        self.ncols = ncols
        self.grid_w = ncols * self.cell_w + (ncols - 1) * _GAP
        self.grid_h = len(row_gaps) * self.cell_h + sum(row_gaps[:-1])
        self.caption_h = caption_lines * _CAPTION_LINE + (_MARGIN if caption_lines else 0)
        self.width = figure_width
        self.height = _MARGIN + self.caption_h + self.grid_h + _MARGIN
        # grid (and its labels) centred horizontally, below the caption
        self.grid_x = left + (figure_width - 2 * _MARGIN - left - self.grid_w) // 2 + _MARGIN
        self.grid_y = _MARGIN + self.caption_h
        self.row_tops = []  # from the top of the grid
        top = 0
        for gap in row_gaps:
            self.row_tops.append(top)
            top += self.cell_h + gap


def _grid_width(left: int, cell_w: int, ncols: int) -> int:
    return max(MIN_GRID_WIDTH, _MARGIN + left + ncols * cell_w + (ncols - 1) * _GAP + _MARGIN)


def grid_figure_size(n: int, image_shape: Sequence[int], ncols: int = 8, caption_lines: int = 0,
                     reconstructions: bool = False) -> tuple[int, int]:
    """(width, height) in pixels of ``sample_grid`` of N images, or with ``reconstructions`` of
    ``reconstruction_figure`` of N pairs, whose caption wraps to CAPTION_LINES lines (0: no caption).

    Images are magnified by ``s = max(1, 96 // max(H, W))`` and laid out in ``c = min(ncols, n)``
    columns 6 px apart, with 12 px margins; reconstruction figures add a 130 px label column. A line
    of caption is 21 px (plus 12 px below the caption).
    """
    _, height, width = _check_shape(image_shape)
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    layout = _layout(n, height, width, min(_check_ncols(ncols), n), caption_lines, reconstructions)
    return layout.width, layout.height


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


def _layout(n: int, height: int, width: int, ncols: int, caption_lines: int, reconstructions: bool) -> _GridLayout:
    scale = _scale(height, width)
    rows = math.ceil(n / ncols)
    left = _LABEL_COLUMN if reconstructions else 0
    gaps = _pair_gaps(rows) if reconstructions else [_GAP] * rows
    return _GridLayout(_grid_width(left, width * scale, ncols), left, (height * scale, width * scale),
                       ncols, gaps, caption_lines)


def _pair_gaps(blocks: int) -> list[int]:
    return [gap for _ in range(blocks) for gap in (_PAIR_GAP, _BLOCK_GAP)]


@functools.cache
def _font(pixels: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's own scalable font (Aileron Regular) at PIXELS; its small bitmap font without FreeType."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=pixels)
    except ImportError:  # pragma: no cover - Pillow built without FreeType
        return ImageFont.load_default()


# stand-ins for characters Pillow's default font has no glyph for (it covers ASCII and a little Latin-1)
_SUBSTITUTES = {
    "\u2212": "-", "\u2010": "-", "\u2011": "-", "\u2012": "-", "\u2013": "-", "\u2014": "-", "\u2015": "-",
    "\u2016": "||", "\u00d7": "x", "\u22c5": "\u00b7", "\u2022": "\u00b7", "\u2192": "->", "\u2190": "<-",
    "\u2248": "~", "\u2264": "<=", "\u2265": ">=", "\u2260": "!=", "\u221e": "inf", "\u00a0": " ",
}


@functools.cache
def _has_glyph(font: Any, char: str) -> bool:
    if char.isspace():
        return True
    try:
        mask = font.getmask(char)
        missing = font.getmask("\U0010fffd")  # a private-use code point: the font's "no glyph" box
    except (UnicodeError, ValueError):  # the bitmap fallback font: Latin-1 only
        return False
    return (mask.size, bytes(mask)) != (missing.size, bytes(missing))


def _printable(text: str, font: Any) -> str:
    """TEXT with each character the font cannot draw replaced -- by an ASCII stand-in (a minus sign by
    '-'), its compatibility form (é by e, ² by ^2, µ by mu), its name (β by beta), else '?' -- never
    by the font's empty box."""
    out = []
    for char in text:
        if _has_glyph(font, char):
            out.append(char)
            continue
        stand_in = _SUBSTITUTES.get(char)
        if stand_in is None:
            tag, _, _ = unicodedata.decomposition(char).partition(">")
            base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
            name = unicodedata.name(char, "")
            if base != char:  # NFKD is idempotent: the recursion stops
                stand_in = {"<super": "^", "<sub": "_"}.get(tag, "") + _printable(base, font)
            elif name.startswith("GREEK ") and " LETTER " in name:
                letter = name.rsplit(" ", 1)[-1].lower()
                stand_in = letter.capitalize() if " CAPITAL " in name else letter
            else:
                stand_in = "?"
        out.append(stand_in)
    return "".join(out)


def _ink(grey: int, colour: bool) -> int | tuple[int, int, int]:
    return (grey, grey, grey) if colour else grey


def _glyph_band(font: Any, sample: str) -> tuple[int, int]:
    """Top and bottom (pixels below the drawing origin) of SAMPLE's glyphs: what text is centred on."""
    _, top, _, bottom = font.getbbox(sample)
    return top, bottom


def _caption_lines(caption: str, width_px: int) -> list[str]:
    if not caption:
        return []
    font = _font(_CAPTION_PX)
    return _wrap_to(font.getlength, _printable(caption, font), width_px - 2 * _MARGIN)


def _chunks(images: np.ndarray, ncols: int) -> list[np.ndarray]:
    return [images[i:i + ncols] for i in range(0, len(images), ncols)]


def _render(layout: _GridLayout, rows: list[np.ndarray], scale: int, caption: list[str],
            labels: Sequence[str] = ()) -> PILImage.Image:
    """ROWS of images ([k, H, W] or [k, H, W, 3] bytes, k <= ncols) on a white page: pixel-exact,
    each in a 1-pixel grey frame, CAPTION lines centred on top, LABELS right-aligned left of the rows."""
    from PIL import Image, ImageDraw

    _check_size(layout.width, layout.height)
    colour = rows[0].ndim == 4
    page = np.full((layout.height, layout.width) + ((3,) if colour else ()), _BACKGROUND, dtype=np.uint8)
    for top, images in zip(layout.row_tops, rows):
        y = layout.grid_y + top
        big = images.repeat(scale, axis=1).repeat(scale, axis=2)
        for column, image in enumerate(big):
            x = layout.grid_x + column * (layout.cell_w + _GAP)
            # a 1-pixel frame just outside the image (in the gap), so bright images do not melt into the page
            page[y - 1:y + layout.cell_h + 1, x - 1:x + layout.cell_w + 1] = _FRAME
            page[y:y + layout.cell_h, x:x + layout.cell_w] = image
    picture = Image.fromarray(page)
    draw = ImageDraw.Draw(picture)
    if caption:
        font = _font(_CAPTION_PX)
        top, bottom = _glyph_band(font, "Hg")  # capitals and descenders centred in each line
        for i, line in enumerate(caption):
            y = _MARGIN + i * _CAPTION_LINE + (_CAPTION_LINE - top - bottom) / 2
            draw.text(((layout.width - font.getlength(line)) / 2, round(y)), line, font=font,
                      fill=_ink(_CAPTION_INK, colour))
    if labels:
        font = _font(_LABEL_PX)
        top, bottom = _glyph_band(font, "x")  # lower-case letters centred on their row
        right = layout.grid_x - _LABEL_PAD
        for row_top, label in zip(layout.row_tops, labels):
            label = _printable(label, font)
            y = layout.grid_y + row_top + layout.cell_h / 2 - (top + bottom) / 2
            draw.text((right - font.getlength(label), round(y)), label, font=font, fill=_ink(_LABEL_INK, colour))
    return picture


def _save(picture: PILImage.Image, path: str | os.PathLike[str]) -> None:
    _write_atomically(path, lambda handle: picture.save(handle, format="PNG", compress_level=_PNG_COMPRESSION))


def reconstruction_figure(originals: ArrayLike, reconstructions: ArrayLike, image_shape: Sequence[int],
                          path: str | os.PathLike[str], caption: str = "", ncols: int = 8) -> None:
    """Originals [n, D] above their reconstructions [n, D] (values in [0, 1], D = C*H*W, C 1 or 3).

    Each row of up to NCOLS originals is followed by the row of their reconstructions; the rows are
    labelled "original" / "reconstruction" on the left and CAPTION (wrapped if long) sits on top.
    Grey images for C = 1, each image magnified by a whole factor (28 px MNIST digits at 84 px).
    """
    x = _images(originals, image_shape, "originals")
    x_hat = _images(reconstructions, image_shape, "reconstructions")
    if x.shape != x_hat.shape:
        raise ValueError(f"originals and reconstructions differ in number: {len(x)} vs {len(x_hat)}")
    ncols = min(_check_ncols(ncols), len(x))
    _, height, width = _check_shape(image_shape)
    lines = _caption_lines(caption, _layout(len(x), height, width, ncols, 0, True).width)
    layout = _layout(len(x), height, width, ncols, len(lines), True)
    blocks = list(zip(_chunks(x, ncols), _chunks(x_hat, ncols)))
    picture = _render(layout, [row for block in blocks for row in block], _scale(height, width), lines,
                      ("original", "reconstruction") * len(blocks))
    _save(picture, path)


def sample_grid(images: ArrayLike, image_shape: Sequence[int], path: str | os.PathLike[str],
                caption: str = "", ncols: int = 8) -> None:
    """A grid of images [n, D] (values in [0, 1]), NCOLS per row, with CAPTION on top."""
    x = _images(images, image_shape, "images")
    ncols = min(_check_ncols(ncols), len(x))
    _, height, width = _check_shape(image_shape)
    lines = _caption_lines(caption, _layout(len(x), height, width, ncols, 0, False).width)
    layout = _layout(len(x), height, width, ncols, len(lines), False)
    _save(_render(layout, _chunks(x, ncols), _scale(height, width), lines), path)


# ------------------------------------------------------------------------------------------------
# training curves


def _number(record: Mapping[str, Any], key: str) -> float:
    value = record.get(key)
    if value is None:
        return math.nan
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: expected a number, got {value!r}") from None


def _series(records: list[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.array([_number(record, key) for record in records], dtype=np.float64)


def _by_epoch(records: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """One record per epoch (the last one written wins, as after a resumed run), sorted by epoch."""
    latest: dict[int, Mapping[str, Any]] = {}
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise ValueError(f"record {i}: expected a dict, got {type(record).__name__}")
        epoch = _number(record, "epoch")
        if not math.isfinite(epoch) or epoch != int(epoch):
            raise ValueError(f"record {i}: 'epoch' must be an integer, got {record.get('epoch')!r}")
        latest[int(epoch)] = record
    if not latest:
        raise ValueError("no records to plot")
    return [latest[epoch] for epoch in sorted(latest)]


def _spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index ranges where MASK is true."""
    spans, start = [], None
    for i, flag in enumerate(list(mask) + [False]):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            spans.append((start, i))
            start = None
    return spans


def _plot(axes: Any, x: np.ndarray, y: np.ndarray, color: str, label: str) -> bool:
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.any():
        return False
    few = keep.sum() <= _MANY_POINTS
    axes.plot(x[keep], y[keep], color=color, label=label, linewidth=1.6 if few else 1.3,
              marker="o" if few else None, markersize=6 if keep.sum() == 1 else 3.5)
    return True


def _short(value: float) -> str:
    """3 significant digits, exponents without padding: 0.001, 6.11e-4."""
    text = f"{value:.3g}"
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if e else text


def _say(axes: Any, message: str) -> None:
    """An empty panel: MESSAGE in its middle instead of meaningless 0..1 ticks."""
    axes.text(0.5, 0.5, message, transform=axes.transAxes, ha="center", va="center", color="0.4",
              parse_math=False)
    axes.tick_params(left=False, labelleft=False, bottom=False, labelbottom=False)
    axes.grid(False)


def _focus(values: list[np.ndarray]) -> tuple[float, float] | None:
    """Y limits that ignore a first-epochs transient dwarfing the rest of the run, else None (autoscale)."""
    lengths = [len(v) for v in values]
    if not lengths or max(lengths) < 10:
        return None
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    tail = np.concatenate([v[len(v) // 10:] for v in values])
    tail = tail[np.isfinite(tail)]
    if finite.size == 0 or tail.size == 0:
        return None
    low, high = float(tail.min()), float(tail.max())
    if finite.max() - finite.min() <= 4 * max(high - low, 1e-12):
        return None
    pad = 0.15 * max(high - low, 1e-6)
    return low - pad, high + pad


def _note_off_scale(top: Any, bottom: Any, epochs: np.ndarray, values: list[np.ndarray],
                    limits: tuple[float, float]) -> None:
    """Say which epochs a zoomed y-axis leaves out, on the side (top or bottom) where they leave it."""
    low, high = limits
    stacked = np.vstack(values)
    below = (stacked < low).any(axis=0)
    above = (stacked > high).any(axis=0)
    for outside, extreme, y, va, word in ((below, np.nanmin(stacked), 0.03, "bottom", "down"),
                                          (above, np.nanmax(stacked), 0.97, "top", "up")):
        if not outside.any():
            continue
        first, last = int(epochs[outside][0]), int(epochs[outside][-1])
        which = f"epoch {first}" if first == last else f"epochs {first}–{last}"
        value = f"{extreme:.4g}".replace("-", "\u2212")  # the minus sign of the tick labels
        note = f"y zoomed: {which} off-scale ({word} to {value})"
        for axes in (top, bottom):
            axes.text(0.97, y, note, transform=axes.transAxes, ha="right", va=va, fontsize=8.5, color="0.3",
                      bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 1.5},
                      parse_math=False)


def training_curves(records: Iterable[Mapping[str, Any]], path: str | os.PathLike[str],
                    caption: str = "") -> int:
    """ELBO, reconstruction term and KL (train and test) of a run, against epoch and against minutes.

    RECORDS are the per-epoch dicts of a run's metrics.jsonl (epoch, beta, lr, train_seconds,
    eval_seconds, train_elbo, train_reconstruction, train_kl, and optional test_elbo,
    test_reconstruction, test_kl; absent or None values are skipped). Epochs where beta is below its
    final value are shaded as KL warm-up; a varying learning rate gets its own (log-scale) column.
    When a record is repeated for an epoch, the last one counts. Returns the number of epochs plotted.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    records = _by_epoch(records)
    epochs = _series(records, "epoch")
    seconds = sum(np.where(np.isfinite(t) & (t > 0), t, 0.0)
                  for t in (_series(records, "train_seconds"), _series(records, "eval_seconds")))
    minutes = np.cumsum(seconds) / 60.0
    timed = minutes[-1] > 0
    beta = _series(records, "beta")
    lr = _series(records, "lr")

    finite_beta = beta[np.isfinite(beta)]
    warmup = _spans(np.isfinite(beta) & (beta < finite_beta[-1] - 1e-12)) if finite_beta.size else []
    finite_lr = lr[np.isfinite(lr) & (lr > 0)]
    lr_varies = finite_lr.size > 1 and finite_lr.max() > finite_lr.min() * (1 + 1e-9)

    panels = [
        ("ELBO", "elbo", "ELBO (nats per datapoint)"),
        ("reconstruction term log p(x|z)", "reconstruction", "log p(x|z) (nats per datapoint)"),
        ("KL(q(z|x) ‖ p(z))", "kl", "KL (nats per datapoint)"),
    ]
    with _style():
        figure = _new_figure(*CURVES_SIZE, layout="constrained")
        figure.get_layout_engine().set(w_pad=0.06, h_pad=0.06, wspace=0.06, hspace=0.08)
        columns = len(panels) + (1 if lr_varies else 0)
        ratios = [1.0] * len(panels) + ([0.8] if lr_varies else [])
        grid = figure.add_gridspec(2, columns, width_ratios=ratios)
        has_test = False
        all_axes = []
        for column, (title, key, ylabel) in enumerate(panels):
            top = figure.add_subplot(grid[0, column])
            bottom = figure.add_subplot(grid[1, column], sharey=top)
            train, test = _series(records, f"train_{key}"), _series(records, f"test_{key}")
            for axes, x in ((top, epochs), (bottom, minutes)):
                axes.set_ylabel(ylabel)
                if axes is bottom and not timed:
                    continue
                drawn = _plot(axes, x, train, _TRAIN_COLOR, "train")
                drawn |= (tested := _plot(axes, x, test, _TEST_COLOR, "test"))
                has_test |= tested
                if not drawn:
                    _say(axes, f"no train_{key} or test_{key} in the records")
            top.set_title(title, parse_math=False)
            limits = _focus([train, test])
            if limits is not None:
                top.set_ylim(*limits)
                _note_off_scale(top, bottom, epochs, [train, test], limits)
            all_axes.append((top, bottom))
        if lr_varies:
            top = figure.add_subplot(grid[0, -1])
            bottom = figure.add_subplot(grid[1, -1], sharey=top)
            for axes, x in ((top, epochs), (bottom, minutes)):
                if axes is top or timed:
                    _plot(axes, x, np.where(lr > 0, lr, np.nan), _LR_COLOR, "learning rate")
                axes.set_yscale("log")
                if finite_lr.max() < 10 * finite_lr.min():  # less than a decade: label ticks plainly
                    axes.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                    axes.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:.2g}"))
                axes.set_ylabel("learning rate (log scale)")
            top.set_title("learning rate")
            all_axes.append((top, bottom))

        first, last = epochs[0], epochs[-1]
        starts = np.concatenate([[0.0], minutes[:-1]])  # minute at which each epoch began
        for top, bottom in all_axes:
            for start, stop in warmup:  # epoch e is trained during [e - 1, e]
                top.axvspan(epochs[start] - 1, epochs[stop - 1], color=_WARMUP_COLOR, alpha=0.18, linewidth=0)
                if timed:
                    bottom.axvspan(starts[start], minutes[stop - 1], color=_WARMUP_COLOR, alpha=0.18,
                                   linewidth=0)
            top.set_xlim(first - 1, last + max(0.5, 0.02 * (last - first + 1)))
            top.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 2.5, 5, 10]))
            top.set_xlabel("epoch")
            bottom.set_xlabel("minutes (train + eval)")
            if timed:
                bottom.set_xlim(0, minutes[-1] * 1.03)
            else:
                _say(bottom, "no timings in the records")

        handles = [Line2D([], [], color=_TRAIN_COLOR, linewidth=2, label="train")]
        if has_test:
            handles.append(Line2D([], [], color=_TEST_COLOR, linewidth=2, label="test"))
        if warmup:
            where = (f"epochs {int(epochs[warmup[0][0]])}–{int(epochs[warmup[0][1] - 1])}"
                     if len(warmup) == 1 else f"{sum(b - a for a, b in warmup)} epochs")
            handles.append(Patch(color=_WARMUP_COLOR, alpha=0.3,
                                 label=f"KL warm-up: β < {finite_beta[-1]:g} ({where})"))
        if lr_varies:
            handles.append(Line2D([], [], color=_LR_COLOR, linewidth=2,
                                  label=f"learning rate {_short(finite_lr[0])} → {_short(finite_lr[-1])}"))
        elif finite_lr.size:
            handles.append(Line2D([], [], linestyle="none", label=f"learning rate {_short(finite_lr[0])} (constant)"))
        # the caption is the legend's title: constrained layout stacks a suptitle and a figure legend
        # on top of each other, but keeps a legend and its title together
        legend = figure.legend(handles=handles, loc="outside upper center", ncols=len(handles), frameon=False,
                               handlelength=2.2, columnspacing=2.5)
        if caption:
            lines = _wrap(figure, caption, _CAPTION_PT + 1, CURVES_SIZE[0] - 4 * _MARGIN)
            legend.set_title("\n".join(lines), prop={"size": _CAPTION_PT + 1})
            legend.get_title().set_parse_math(False)
        _write_png(figure, path)
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

    if k <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(k)]
    if k <= 20:
        return [matplotlib.colormaps["tab20"](i) for i in range(k)]
    return [matplotlib.colormaps["turbo"](i / (k - 1)) for i in range(k)]


def scatter(groups: Mapping[Any, ArrayLike], path: str | os.PathLike[str], title: str = "",
            xlabel: str = "", ylabel: str = "") -> None:
    """Points [n, 2] per group (label -> points), one colour per group and a legend.

    Colours follow the sorted labels (numeric labels numerically: digit classes 0..9 always get the
    same tab10 colours). All groups are drawn in one shuffled layer (fixed private seed), so no group
    hides another just because it came later. Marker size and opacity shrink as points multiply.
    """
    from matplotlib.lines import Line2D

    if not isinstance(groups, Mapping) or not groups:
        raise ValueError("groups must be a non-empty dict: label -> [n, 2] points")
    labels = sorted(groups, key=_label_order)
    points = []
    for label in labels:
        xy = _as_array(groups[label], f"group {label!r}")
        if xy.size == 0:
            xy = xy.reshape(0, 2)
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise ValueError(f"group {label!r}: expected [n, 2] points, got shape {xy.shape}")
        points.append(xy)
    colours = _colours(len(labels))
    xy = np.concatenate(points)
    colour_index = np.concatenate([np.full(len(p), i) for i, p in enumerate(points)]).astype(int)
    order = np.random.default_rng(0).permutation(len(xy))  # a private generator: global RNGs untouched
    total = len(xy)
    size, alpha = (14, 0.85) if total <= 1000 else (5, 0.6) if total <= 10000 else (1.5, 0.35)

    with _style():
        figure = _new_figure(*SCATTER_SIZE, layout="constrained")
        axes = figure.add_subplot()
        if total:
            rgba = np.array(colours)[colour_index[order]]
            axes.scatter(xy[order, 0], xy[order, 1], s=size, c=rgba, alpha=alpha, linewidths=0,
                         rasterized=False)
        handles = [Line2D([], [], linestyle="none", marker="o", markersize=7, color=colour,
                          label=f"{_escape(label)}  ({len(p)})")
                   for label, colour, p in zip(labels, colours, points)]
        axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0,
                    frameon=False, handletextpad=0.3, title="group (points)")
        axes.set_xlabel(xlabel)
        axes.set_ylabel(ylabel)
        if title:
            lines = _wrap(figure, title, _CAPTION_PT, SCATTER_SIZE[0] - 4 * _MARGIN)
            figure.suptitle("\n".join(lines), fontsize=_CAPTION_PT, parse_math=False)
        _write_png(figure, path)
