"""Real MNIST, reached only through pyrovae's own variable: skipped where it is not on disk."""
import os
from pathlib import Path

import pytest
import torch

from pyrovae.core.errors import UsageError
from pyrovae.data import DATA_DIR_ENV, load_dataset

ROOT = os.environ.get(DATA_DIR_ENV)
needs_mnist = pytest.mark.skipif(not (ROOT and (Path(ROOT) / "MNIST" / "raw").is_dir()),
                                 reason=f"set {DATA_DIR_ENV} to a folder holding MNIST/raw")


@needs_mnist
def test_mnist_loads_from_the_data_dir_variable():
    data = load_dataset("mnist")
    assert data.train.shape == (60_000, 784) and data.test.shape == (10_000, 784)
    assert data.image_shape == (1, 28, 28) and data.test_labels.shape == (10_000,)
    assert 0.0 == data.train.min().item() and data.train.max().item() == 1.0
    # the shipped sample is the first rows of the real set
    sample = load_dataset("mnist-sample")
    assert torch.equal(sample.train, data.train[:5000]) and torch.equal(sample.test, data.test[:1000])


def test_mnist_missing_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    with pytest.raises(UsageError, match="--data-dir"):
        load_dataset("mnist", data_dir=str(tmp_path))
