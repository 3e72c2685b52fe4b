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
