"""Data sets as flat float tensors: rows are datapoints, all other dims are flattened.

- ``mnist``: torchvision's MNIST, from ``data_dir`` or $PYROVAE_DATA_DIR, else downloaded.
- ``mnist-sample``: 5,000 training and 1,000 test MNIST digits shipped with pyrovae (no network).
- ``toy2d``: a 2-D mixture of 8 Gaussians on a ring, the classic demo for a Normal likelihood.
- a path: an ``.npz`` with arrays ``train`` (and optionally ``test``), or an ``.npy`` of
  which the last ``test_fraction`` of rows becomes the test split.

Images come scaled to [0, 1]. For the Bernoulli likelihood, :func:`binarize` draws binary
pixels x ~ Bernoulli(intensity): anew every epoch (dynamic) or once by the seed (static).
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from .core.errors import UsageError, option as named
from .core.noise import bernoulli
from .core.options import Options, open_interval, option
from .evaluation.settings import whole

DATA_DIR_ENV = "PYROVAE_DATA_DIR"
BUILTIN = ("mnist", "mnist-sample", "toy2d")
BINARIZE = ("dynamic", "static", "none")


@dataclass
class DataOptions(Options):
    """Where a run's data comes from and how it is prepared."""

    dataset: str = option("mnist-sample", "mnist (60,000 digits, from --data-dir), mnist-sample (5,000 digits that "
                          "ship with pyrovae), toy2d (a 2-D mixture of 8 Gaussians), or a .npz (arrays train, test) / "
                          ".npy file.")
    data_dir: str | None = option(None, "Folder holding MNIST/raw (else $PYROVAE_DATA_DIR); for a run, where MNIST "
                                  "is now.", cli=False)   # the CLI's --data-dir is shared by every command
    test_fraction: float = option(0.1, "Share of the rows of an .npy file held out as the test split.",
                                  check=open_interval(0, 1))
    binarize: str | None = option(None, "Bernoulli data: resample every epoch (default), fix once by the seed, or "
                                  "keep intensities.", choices=BINARIZE)
    validation: int = option(0, "Training points held out as a validation split (the last N rows of the training "
                             "data; Burda et al. held out 400 of MNIST's): its ELBO is recorded every epoch and "
                             "RUN_DIR/best.pt keeps the checkpoint of the best one. 0: none.",
                             check=whole(0))


@dataclass
class Dataset:
    """Rows first: [N, D] as the loaders here give them, or any shape of your own ([N, C, H, W]
    images, say), alone or in a tuple (x, y, ...)."""

    name: str
    train: torch.Tensor            # [N, D] float32 (or [N, ...], or a tuple (x, y, ...) of row-first tensors)
    test: torch.Tensor             # like train
    image_shape: tuple[int, ...] | None = None  # (C, H, W) when rows are images (read from [N, H, W] / [N, C, H, W] data)
    test_labels: torch.Tensor | None = None     # class labels, for latent maps

    def __post_init__(self) -> None:
        if self.image_shape is None:
            self.image_shape = _image_shape(self.train if isinstance(self.train, torch.Tensor) else self.train[0])

    @property
    def data_dim(self) -> int:
        """Numbers per datapoint (all dimensions after the first)."""
        x = self.train if isinstance(self.train, torch.Tensor) else self.train[0]
        return math.prod(x.shape[1:])


def load_dataset(name: str, data_dir: str | None = None, test_fraction: float = 0.1,
                 seed: int = 0) -> Dataset:
    """Load a data set by name or path; raise :class:`UsageError` with the fix when it cannot."""
    if name == "mnist":
        return _mnist(data_dir)
    if name == "mnist-sample":
        return _mnist_sample()
    if name == "toy2d":
        return toy2d(seed=seed)
    return _from_file(Path(name), test_fraction)


def _mnist(data_dir: str | None) -> Dataset:
    import torchvision  # imported lazily: it is slow to import and only MNIST needs it

    root = data_dir or os.environ.get(DATA_DIR_ENV)
    download = root is None
    root = root or str(Path.home() / ".cache" / "pyrovae")
    try:
        splits = [torchvision.datasets.MNIST(root, train=train, download=download) for train in (True, False)]
    except Exception as error:  # torchvision raises RuntimeError or URLError, depending on the cause
        if download:
            raise UsageError(
                f"MNIST is not in {root!r} and could not be downloaded ({type(error).__name__}); "
                f"pass {named('data_dir')} (or set {DATA_DIR_ENV}) to a folder holding MNIST/raw, "
                "or use --dataset mnist-sample") from None
        raise UsageError(_not_found(Path(root))) from None
    train, test = (split.data.reshape(len(split.data), -1).float() / 255.0 for split in splits)
    return Dataset("mnist", train, test, (1, 28, 28), splits[1].targets)


def _not_found(root: Path) -> str:
    """What was looked for where MNIST was not found (no download is tried in a folder given), and
    the folder to pass instead when ROOT is itself MNIST/ or MNIST/raw/ (a level too deep)."""
    raw = root / "MNIST" / "raw"
    if raw.is_dir():
        return f"{str(raw)!r} does not hold MNIST's files as torchvision reads them (train-images-idx3-ubyte, ...); " \
               "copy them there again, or use --dataset mnist-sample"
    looked = f"MNIST not found: looked for {str(raw)!r} (torchvision's layout)"
    for parent in (root.parent, root.parent.parent):
        if (parent / "MNIST" / "raw").is_dir():
            return f"{looked}, but {str(root)!r} is inside it; pass {named('data_dir', str(parent))}, the folder " \
                   "that holds MNIST/"
    return f"{looked}; pass {named('data_dir')} (or set {DATA_DIR_ENV}) to the folder that holds MNIST/raw, or " \
           "use --dataset mnist-sample"


def _mnist_sample() -> Dataset:
    with resources.files("pyrovae").joinpath("assets/mnist_sample.npz").open("rb") as file:
        arrays = np.load(file)
        train, test = (torch.from_numpy(arrays[key].reshape(len(arrays[key]), -1).astype(np.float32) / 255.0)
                       for key in ("train", "test"))
        labels = torch.from_numpy(arrays["test_labels"].astype(np.int64))
    return Dataset("mnist-sample", train, test, (1, 28, 28), labels)


def toy2d(num_train: int = 10_000, num_test: int = 2_000, num_modes: int = 8, radius: float = 2.0,
          std: float = 0.2, seed: int = 0) -> Dataset:
    """Mixture of ``num_modes`` isotropic Gaussians with means evenly spaced on a circle."""
    generator = torch.Generator().manual_seed(seed)
    angles = torch.arange(num_modes) * (2 * math.pi / num_modes)
    means = radius * torch.stack([angles.cos(), angles.sin()], dim=-1)

    def draw(n: int) -> torch.Tensor:
        modes = torch.randint(num_modes, (n,), generator=generator)
        return means[modes] + std * torch.randn(n, 2, generator=generator)

    return Dataset("toy2d", draw(num_train), draw(num_test))


def _from_file(path: Path, test_fraction: float) -> Dataset:
    if not path.exists():
        raise UsageError(f"data file {str(path)!r} does not exist; pass an existing .npz/.npy path "
                         f"or one of {', '.join(BUILTIN)}")
    if path.suffix not in (".npz", ".npy"):
        raise UsageError(f"data file {str(path)!r} is not .npz or .npy; save your array with numpy.save or numpy.savez")
    try:
        with np.load(path, allow_pickle=False) as loaded:  # allow_pickle=False: an array file is data, not code
            arrays = dict(loaded) if isinstance(loaded, np.lib.npyio.NpzFile) else None
    except TypeError:  # np.load on .npy returns an ndarray, not a context manager
        arrays = None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if "allow_pickle" in str(error) and "Object arrays" not in str(error):   # numpy's fallback: a pickle
            raise UsageError(f"{str(path)!r} is not a numpy array file (no .npy/.npz header: text, a pickle or "
                             "another format), and pyrovae does not unpickle; re-save it with numpy.save / "
                             "numpy.savez") from None
        if "allow_pickle" in str(error):   # object (e.g. ragged) arrays are pickles: never unpickled here
            raise UsageError(f"{str(path)!r} holds pickled Python objects (an object or ragged array), which "
                             "pyrovae does not load (data, not code); save a rectangular numeric array") from None
        raise UsageError(f"cannot read {str(path)!r} as a numpy array file ({_short(error)}); "
                         "re-save it with numpy.save / numpy.savez") from None
    if arrays is None:
        try:
            whole = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as error:
            raise UsageError(f"cannot read {str(path)!r} as a numpy array ({_short(error)}); "
                             "re-save it with numpy.save") from None
        if not 0 < test_fraction < 1:
            raise UsageError(f"--test-fraction must lie in (0, 1), got {test_fraction}")
        shape = _image_shape(whole)
        whole = _as_rows(whole, f"{path.name}")
        num_test = max(1, int(round(len(whole) * test_fraction)))
        if len(whole) - num_test < 1:
            raise UsageError(f"{path.name} has {len(whole)} row(s): too few to hold out a test split; "
                             "pass an .npz with separate 'train' and 'test' arrays")
        train, test = whole[:-num_test], whole[-num_test:]
    else:
        if "train" not in arrays:
            raise UsageError(f"{path.name} has no array named 'train' (it has {sorted(arrays) or 'none'}); "
                             "save it with numpy.savez(path, train=..., test=...)")
        shape = _image_shape(arrays["train"])
        train = _as_rows(arrays["train"], f"{path.name}['train']")
        test = _as_rows(arrays["test"], f"{path.name}['test']") if "test" in arrays else train
        if train.shape[1] != test.shape[1]:
            raise UsageError(f"{path.name}: 'test' rows have {test.shape[1]} features but 'train' rows have "
                             f"{train.shape[1]}; both splits must have the same feature size")
    return Dataset(path.stem, torch.from_numpy(train), torch.from_numpy(test), shape)


def _image_shape(array: np.ndarray | torch.Tensor) -> tuple[int, ...] | None:
    """Rows shaped [H, W] or [C, H, W] with C in (1, 3) are images (for sample grids and --model conv)."""
    if array.ndim == 3:
        return (1, *map(int, array.shape[1:]))
    if array.ndim == 4 and array.shape[1] in (1, 3):
        return tuple(map(int, array.shape[1:]))
    return None


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:120] if str(error) else type(error).__name__


def _as_rows(array: np.ndarray, what: str) -> np.ndarray:
    """Validate a numeric array and flatten it to [rows, features] float32."""
    if array.dtype == object or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise UsageError(f"{what} has dtype {array.dtype}, not numbers; save a numeric (or ragged-free) array")
    if np.issubdtype(array.dtype, np.complexfloating):
        raise UsageError(f"{what} has complex dtype {array.dtype}; save real numbers (e.g. its .real or abs())")
    if array.ndim < 2:
        raise UsageError(f"{what} has shape {array.shape}; it needs rows of features (at least 2 dims)")
    if array.shape[0] == 0 or array[0].size == 0:
        raise UsageError(f"{what} is empty (shape {array.shape}); it needs at least one row with features")
    rows = array.reshape(array.shape[0], -1)
    if not np.isfinite(rows).all():
        bad = int((~np.isfinite(rows)).any(axis=1).sum())
        raise UsageError(f"{what} has NaN or inf in {bad} row(s); drop or impute them first")
    with np.errstate(over="ignore"):
        rows = rows.astype(np.float32)
    if not np.isfinite(rows).all():   # finite in float64 but beyond float32's range (about 3.4e38)
        raise UsageError(f"{what} has values beyond float32's range (|x| > 3.4e38); rescale the data first")
    return rows


def check_for_likelihood(data: Dataset, likelihood: str) -> None:
    """Bernoulli needs pixel intensities in [0, 1]."""
    if likelihood != "bernoulli":
        return
    for split, values in (("train", data.train), ("test", data.test)):
        low, high = values.min().item(), values.max().item()
        if low < 0 or high > 1:
            raise UsageError(f"--likelihood bernoulli needs data in [0, 1], but {data.name} {split} spans "
                             f"[{low:g}, {high:g}]; rescale it or use --likelihood normal")


def binarize(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x ~ Bernoulli(probs), elementwise, with a given generator (one draw for the whole array):
    the draws of dynamic binarization (:func:`pyrovae.core.noise.bernoulli`)."""
    return bernoulli(probs, generator)
