"""--model conv: a conv encoder and transposed-conv decoder for C x H x W images of any size,
served to every guide with an encoder through the model's ``features`` hook, end to end on tiny
images through fit, resume, evaluate (IS and AIS) and compare, and refused on rows that are not
images. (Under torchrun: tests/training/test_distributed.py.)"""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from pyrovae import runs
from pyrovae.cli.main import cli
from pyrovae.config import FitConfig, build_vae
from pyrovae.core.contract import declared
from pyrovae.core.errors import UsageError
from pyrovae.models.conv import ConvDecoder, ConvEncoder

TINY = ["--model", "conv", "--channels", "4,8", "--hidden", "16", "--latent-dim", "2", "--batch-size", "40",
        "--lr", "0.01", "--quiet", "--device", "cpu"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """80 training and 20 test images of 9 x 10 pixels ([N, H, W]: one channel), in [0, 1]."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("images") / "images.npz"
    np.savez(path, train=rng.random((80, 9, 10), dtype=np.float32), test=rng.random((20, 9, 10), dtype=np.float32))
    return path


@pytest.mark.parametrize("shape,channels", [((1, 28, 28), (32, 64)), ((3, 5, 7), (4, 8)), ((1, 9, 8), (2, 3, 5))])
def test_decoder_gives_back_images_of_any_size(shape, channels):
    """Odd sides are halved rounding down and restored by the transposed convolutions' output
    padding: the decoder's rows have C * H * W numbers, for any leading dims (particles)."""
    decoder, encoder = ConvDecoder(5, (16,), shape, channels), ConvEncoder(shape, channels)
    z = torch.randn(3, 2, 5)
    x = decoder(z)
    assert x.shape == (3, 2, int(np.prod(shape)))
    side = lambda s: s // 2 ** len(channels)   # ⌊s / 2^L⌋ after L halvings
    assert encoder(x).shape == (3, 2, channels[-1] * side(shape[1]) * side(shape[2])) == (3, 2, encoder.out_features)


@pytest.mark.parametrize("guide", ["amortized", "flow", "full-covariance", "semi-amortized"])
def test_every_guide_with_an_encoder_sees_the_image_through_its_own_convolutions(guide):
    vae = build_vae(FitConfig(model="conv", guide=guide, channels=(3,), latent_dim=2, hidden=(4,), flow_hidden=4),
                    16, 10, (1, 4, 4))
    convs = [m for m in vae.guide.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].in_channels == 1 and convs[0].out_channels == 3
    model_parameters = {id(p) for p in vae.model.parameters()}
    assert not model_parameters & {id(p) for p in vae.guide.parameters()}   # the guide owns its encoder


def test_a_model_without_features_leaves_the_guides_mlp():
    vae = build_vae(FitConfig(latent_dim=2, hidden=(4,)), 16, 10, (1, 4, 4))
    assert declared(vae.model, "model", "features") is None
    assert not any(isinstance(m, nn.Conv2d) for m in vae.guide.modules())


def test_conv_is_refused_on_rows_that_are_not_images(tmp_path):
    with pytest.raises(UsageError, match="needs images"):
        build_vae(FitConfig(model="conv"), 16, 10)
    data = tmp_path / "rows.npz"
    np.savez(data, train=np.random.default_rng(0).random((50, 16), dtype=np.float32))
    result = invoke("fit", "--dataset", data, "--out", tmp_path / "run", *TINY)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyrovae: error: --model conv needs images"), result.output
    assert not (tmp_path / "run").exists()   # nothing written


def test_conv_run_fits_resumes_bit_identically_and_evaluates(images, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert invoke("fit", "--dataset", images, "--epochs", 2, "--out", whole, *TINY).exit_code == 0
    assert invoke("fit", "--dataset", images, "--epochs", 1, "--out", split, *TINY).exit_code == 0
    resumed = invoke("fit", "--dataset", images, "--epochs", 2, "--out", split, "--resume", *TINY)
    assert resumed.exit_code == 0, resumed.output
    a, b = runs.load_checkpoint(whole), runs.load_checkpoint(split)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][key], b["model"][key]) for key in a["model"])
    assert json.loads(resumed.output.strip().splitlines()[-1])["test_elbo"] is not None
    assert json.loads((whole / runs.CONFIG).read_text())["image_shape"] == [1, 9, 10]

    evaluated = invoke("evaluate", whole, "--k", 30, "--limit", 6, "--device", "cpu")
    assert evaluated.exit_code == 0, evaluated.output
    out = json.loads(evaluated.output.strip().splitlines()[-1])
    # log p̂ ≥ the ELBO on the same draws (Jensen), and both are finite numbers of 90 pixels
    assert out["n"] == 6 and np.isfinite(out["log_likelihood"]) and out["log_likelihood"] >= out["elbo"]
    annealed = invoke("evaluate", whole, "--method", "ais", "--steps", 4, "--chains", 2, "--is-k", 10, "--limit", 3,
                      "--device", "cpu")   # HMC: gradients through the transposed convolutions
    assert annealed.exit_code == 0, annealed.output
    assert np.isfinite(json.loads(annealed.output.strip().splitlines()[-1])["log_likelihood"])
    compared = invoke("compare", whole, "--limit", 4, "--k", 20, "--steps", 5, "--device", "cpu")
    assert compared.exit_code == 0, compared.output
    gaps = json.loads(compared.output.strip().splitlines()[-1])["test"]
    assert np.isfinite(gaps["amortization_gap"]) and np.isfinite(gaps["approximation_gap"])
