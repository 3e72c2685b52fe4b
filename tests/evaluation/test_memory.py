"""IS refuses, before any work, a K and batch whose buffers cannot fit; the networks' activations
are counted from the layers' outputs, so a conv net's C x H x W feature maps count (its Linear
widths alone undercount them many times over)."""
import pytest
import torch
from torch import nn

from pyrovae.config import FitConfig, build_vae
from pyrovae.core.errors import UsageError
from pyrovae.evaluation import driver, importance
from pyrovae.evaluation.importance import ImportanceSampling, activations_per_pair
from pyrovae.evaluation.settings import CHUNK_SIZE

SHAPE = (1, 12, 12)


def conv_vae():
    torch.manual_seed(0)
    return build_vae(FitConfig(model="conv", channels=(8, 16), latent_dim=3, hidden=(10,)), 144, 50, SHAPE)


def test_conv_activations_are_the_feature_maps():
    vae = conv_vae()
    x = torch.bernoulli(torch.full((4, 144), 0.3))
    before = torch.get_rng_state()
    counted = activations_per_pair(vae, *vae.bound(), (x,))
    assert torch.equal(torch.get_rng_state(), before)   # the caller's generator as it was
    maps = 8 * 6 * 6 + 16 * 3 * 3   # the encoder's two conv outputs; the decoder's mirror them
    assert counted >= 2 * maps
    widths = sum(m.out_features for m in vae.modules() if isinstance(m, nn.Linear))
    assert counted > 2 * widths


def test_is_refuses_a_batch_whose_conv_activations_cannot_fit(monkeypatch):
    vae = conv_vae()
    x = torch.bernoulli(torch.full((4, 144), 0.3))
    k, batch, chunk = 200, 4, CHUNK_SIZE
    per_pair = {"layers": activations_per_pair(vae, *vae.bound(), (x,)) + 2 * 144,
                "linear widths": sum(m.out_features for m in vae.modules() if isinstance(m, nn.Linear)) + 2 * 144}
    need = {what: batch * (4 * k * 8 + 3 * chunk * n * 4) for what, n in per_pair.items()}
    # memory that would hold the buffers were the Linear layers' widths all, but not the feature maps
    have = (need["linear widths"] + need["layers"]) / 2 / 0.8
    monkeypatch.setattr(driver, "available_memory", lambda device: int(have))
    monkeypatch.setattr(importance, "available_memory", lambda device: int(have))
    with pytest.raises(UsageError, match="batch.size=2 or less"):
        ImportanceSampling(k=k, batch_size=batch, chunk_size=chunk).estimate(vae, x)


def test_is_without_a_batch_size_takes_as_many_points_as_fit_and_the_same_estimates(monkeypatch, caplog):
    # a VampPrior's prior costs hundreds of numbers per pair: the default batch must not refuse it
    vae = conv_vae()
    x = torch.bernoulli(torch.full((6, 144), 0.3))
    k, chunk = 200, CHUNK_SIZE
    per_point = 4 * k * 8 + 3 * chunk * (activations_per_pair(vae, *vae.bound(), (x,)) + 2 * 144) * 4
    have = 2.5 * per_point / 0.8   # room for 2 points at a time
    expected = ImportanceSampling(k=k, batch_size=6, chunk_size=chunk).estimate(vae, x).log_px
    monkeypatch.setattr(driver, "available_memory", lambda device: int(have))
    monkeypatch.setattr(importance, "available_memory", lambda device: int(have))
    with caplog.at_level("INFO", logger="pyrovae.evaluation.importance"):
        got = ImportanceSampling(k=k, chunk_size=chunk).estimate(vae, x).log_px
    assert "IS: 2 points per pass" in caplog.text
    assert torch.equal(torch.as_tensor(got), torch.as_tensor(expected))   # the draws are seeded per point
    with pytest.raises(UsageError, match="batch.size=2 or less"):   # a batch size given is not changed
        ImportanceSampling(k=k, batch_size=3, chunk_size=chunk).estimate(vae, x)
