"""Property-based tests: data validation and option parsing either succeed with the promised shape
or raise UsageError, never another exception."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pyrovae.config import FitConfig
from pyrovae.core.options import parse_widths as parse_hidden
from pyrovae.core.errors import UsageError
from pyrovae.data import check_for_likelihood, load_dataset

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

DTYPES = st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.uint8, np.bool_, np.complex64])
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


@st.composite
def arrays(draw):
    """Random arrays: random dtype and shape, with NaN/inf/huge values sprinkled in at random places."""
    dtype = np.dtype(draw(DTYPES))
    shape = draw(SHAPES)
    if dtype.kind == "f":
        elements = st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    elif dtype.kind == "c":
        elements = st.complex_numbers(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True)
    else:
        elements = None
    return draw(hnp.arrays(dtype, shape, elements=elements))


def _check(dataset, n_rows_total: int | None, features: int) -> None:
    for split in (dataset.train, dataset.test):
        assert isinstance(split, torch.Tensor) and split.dtype == torch.float32 and split.ndim == 2
        assert split.shape[1] == features and len(split) >= 1
        assert torch.isfinite(split).all()
    if n_rows_total is not None:
        assert len(dataset.train) + len(dataset.test) == n_rows_total


@SETTINGS
@given(array=arrays(), test_fraction=st.floats(0.01, 0.99))
def test_npy_is_accepted_with_right_shapes_or_refused(array, test_fraction):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, array)
        try:
            dataset = load_dataset(str(path), test_fraction=test_fraction)
        except UsageError as error:
            assert "\n" not in str(error) and str(error)
            return
    assert array.ndim >= 2 and array.dtype.kind in "fiub"
    features = int(np.prod(array.shape[1:]))
    _check(dataset, array.shape[0], features)
    assert np.isfinite(array.astype(np.float64)).all()
    np.testing.assert_array_equal(torch.cat([dataset.train, dataset.test]).numpy(),
                                  array.reshape(len(array), -1).astype(np.float32))


@SETTINGS
@given(train=arrays(), test=st.one_of(st.none(), arrays()), likelihood=st.sampled_from(["bernoulli", "normal"]))
def test_npz_is_accepted_with_right_shapes_or_refused(train, test, likelihood):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npz"
        np.savez(path, train=train, **({} if test is None else {"test": test}))
        try:
            dataset = load_dataset(str(path))
            check_for_likelihood(dataset, likelihood)
        except UsageError as error:
            assert "\n" not in str(error) and str(error)
            return
    features = int(np.prod(train.shape[1:]))
    _check(dataset, None, features)
    assert len(dataset.train) == train.shape[0]
    if test is not None:
        assert len(dataset.test) == test.shape[0]
    if likelihood == "bernoulli":
        assert dataset.train.min() >= 0 and dataset.train.max() <= 1


HIDDEN_TEXT = st.one_of(
    st.text(max_size=20),
    st.text(alphabet="0123456789,- +_.e", max_size=20),
    st.lists(st.integers(-5, 10**12), max_size=4).map(lambda ws: ",".join(map(str, ws))),
)


@SETTINGS
@given(text=HIDDEN_TEXT)
def test_parse_hidden_returns_positive_ints_or_usage_error(text):
    try:
        widths = parse_hidden(text)
    except UsageError as error:
        assert "--hidden" in str(error) and "\n" not in str(error)
        return
    assert isinstance(widths, tuple)
    assert all(isinstance(width, int) and width > 0 for width in widths)


def _numbers(ints: bool):
    base = st.integers(-10**12, 10**12) if ints else st.floats(allow_nan=True, allow_infinity=True)
    return st.one_of(base, st.sampled_from([0, 1, -1, 2**32]) if ints else st.sampled_from([0.0, 1e-3, -1.0, 1.0]))


CONFIGS = st.builds(
    FitConfig,
    likelihood=st.sampled_from(["bernoulli", "normal", "poisson", ""]),
    sigma=st.one_of(st.sampled_from(["1.0", "learned", "learned-pixel", "0", "-1", "nan", "inf", "abc", ""]),
                    st.floats().map(str)),
    binarize=st.sampled_from([None, "dynamic", "static", "none", "sometimes"]),
    latent_dim=_numbers(True), hidden=st.lists(st.integers(-3, 10**6), max_size=3).map(tuple),
    guide=st.sampled_from(["amortized", "meanfield", "other"]),
    elbo=st.sampled_from(["trace", "meanfield", "iwae", "renyi"]),
    particles=_numbers(True), jit=st.booleans(), beta=_numbers(False), kl_warmup=_numbers(True),
    epochs=_numbers(True), batch_size=_numbers(True), lr=_numbers(False), seed=_numbers(True),
    test_fraction=_numbers(False), eval_train_points=_numbers(True),
)


@SETTINGS
@given(config=CONFIGS)
def test_fit_config_validate_returns_or_raises_usage_error(config):
    try:
        result = config.validate()
    except UsageError as error:
        assert "\n" not in str(error) and str(error)
        return
    assert result is config
    assert config.epochs >= 1 and config.batch_size >= 1 and config.latent_dim >= 1 and config.particles >= 1
    assert math.isfinite(config.lr) and config.lr > 0 and math.isfinite(config.beta) and config.beta >= 0
    assert 0 < config.test_fraction < 1 and 0 <= config.seed < 2**32
    assert all(width > 0 for width in config.hidden)
    assert not (config.jit and config.elbo == "iwae")
    assert config.likelihood == "bernoulli" or config.binarize == "none"
