"""Real MNIST, reached only through pyrovae's own variable: skipped where it is not on disk."""
import os
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from pyrovae.cli.main import cli
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
    with pytest.raises(UsageError, match="looked for .*MNIST/raw.*; pass data_dir "):   # no download was tried
        load_dataset("mnist", data_dir=str(tmp_path))


@pytest.mark.parametrize("deeper", ["MNIST", "MNIST/raw"])
def test_a_data_dir_one_folder_too_deep_names_the_parent(tmp_path, deeper):
    (tmp_path / "MNIST" / "raw").mkdir(parents=True)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["fit", "--dataset", "mnist", "--data-dir", str(tmp_path / deeper), "--out",
                                      str(out), "--epochs", "1", "--quiet"])
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert f"looked for {str(tmp_path / deeper / 'MNIST' / 'raw')!r}" in line and "downloaded" not in line
    assert line.endswith(f"pass --data-dir {tmp_path}, the folder that holds MNIST/"), line
    assert not out.exists()
    # the right folder, without MNIST's files in it, says that
    result = CliRunner().invoke(cli, ["fit", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(out)])
    assert result.exit_code == 2 and "does not hold MNIST's files" in result.stderr and not out.exists()
