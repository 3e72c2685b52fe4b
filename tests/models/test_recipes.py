"""The papers' recipes (issue 23): each preset builds the networks of its paper (layer sizes,
parameter counts, activation), and the options they rest on do what they say: --init glorot,
--lr-schedule burda on an epoch and on a time budget, Adam's beta1 and epsilon."""
import json
import math
import types

import pytest
import torch
from torch import nn

from pyrovae.config import PRESETS, FitConfig, build_vae
from pyrovae.core.distributed import Context
from pyrovae.core.errors import UsageError
from pyrovae.core.nets import mlp
from pyrovae.runs import load_checkpoint, read_jsonl
from pyrovae.training.schedule import LR_SCHEDULES, BurdaSchedule, LRDecay, burda_factor, burda_stage, lr_schedule
from pyrovae.workflows import fit

MNIST_DIM, MNIST_TRAIN = 784, 59_600


def affine_shapes(module: nn.Module) -> list[tuple[int, int]]:
    return [(layer.in_features, layer.out_features) for layer in module.modules() if isinstance(layer, nn.Linear)]


def count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear_params(sizes) -> int:
    return sum(fan_in * fan_out + fan_out for fan_in, fan_out in zip(sizes[:-1], sizes[1:]))


def preset_vae(name: str):
    return build_vae(FitConfig(**PRESETS[name]).validate(), MNIST_DIM, MNIST_TRAIN)


def test_burda_one_layer_is_their_network():
    # yburda/iwae experiments.py: latent [50], q and p hidden [200, 200]; tanh (nnet.py); the
    # encoder's mean and sigma layers are two Linear(200, 50): as many weights as our one (200, 100)
    vae = preset_vae("burda-1layer")
    assert affine_shapes(vae.model.decoder) == [(50, 200), (200, 200), (200, 784)]
    assert affine_shapes(vae.guide.encoders["z"]) == [(784, 200), (200, 200), (200, 100)]
    assert count(vae.model) == linear_params([50, 200, 200, 784]) == 207_984
    assert count(vae.guide) == linear_params([784, 200, 200, 100]) == 217_300
    for net in (vae.model.decoder, vae.guide.encoders["z"]):
        assert {type(m) for m in net if not isinstance(m, nn.Linear)} == {nn.Tanh}


def test_burda_two_layers_are_their_networks():
    # experiments.py: latent [100, 50], q hidden [[200, 200], [100, 100]], p hidden [[100, 100], [200, 200]]
    vae = preset_vae("burda-2layer")
    assert affine_shapes(vae.model.decoder) == [(100, 200), (200, 200), (200, 784)]
    assert affine_shapes(vae.model.prior_net) == [(50, 100), (100, 100), (100, 200)]
    assert affine_shapes(vae.guide.encoders["z1"]) == [(784, 200), (200, 200), (200, 200)]
    assert affine_shapes(vae.guide.encoders["z2"]) == [(100, 100), (100, 100), (100, 100)]
    assert count(vae.model) + count(vae.guide) == 521_084
    assert all(isinstance(m, nn.Tanh) for m in vae.model.prior_net if not isinstance(m, nn.Linear))


@pytest.mark.parametrize("name", ["cremer-ffg", "cremer-flow"])
def test_cremer_networks(name):
    # lxuechen/inference-suboptimality vae.py: fc1-fc3 784-200-200-(2 x 50), fc4-fc6 50-200-200-784, ELU
    vae = preset_vae(name)
    assert affine_shapes(vae.model.decoder) == [(50, 200), (200, 200), (200, 784)]
    outputs = 3 * 50 if name == "cremer-flow" else 2 * 50   # the flow's encoder also gives its context
    assert affine_shapes(vae.guide.encoders["z"]) == [(784, 200), (200, 200), (200, outputs)]
    assert {type(m) for m in vae.model.decoder if not isinstance(m, nn.Linear)} == {nn.ELU}
    if name == "cremer-flow":   # 2 steps of 200 hidden units (their n_flows=2, h_s=200)
        steps = vae.guide.flows["z"]
        assert len(steps) == 2 and all(step.nn.layers[0].out_features == 200 for step in steps)


def test_glorot_init_draws_their_bounds():
    # nnet.Linear.random: W ~ U(-a, a), a = sqrt(6 / (n_in + n_out)), b = 0. The variance of the
    # 784 x 200 draws is a^2 / 3 with a relative SE of sqrt(0.8 / n) = 0.23% (uniform: excess
    # kurtosis -1.2); 2% is 9 SE, and PyTorch's default (a = 1/sqrt(784)) is 4.8x smaller
    torch.manual_seed(0)
    layer = mlp([784, 200, 50], init="glorot")[0]
    bound = math.sqrt(6 / (784 + 200))
    assert layer.weight.abs().max() <= bound
    assert layer.weight.var().item() == pytest.approx(bound ** 2 / 3, rel=0.02)
    assert torch.all(layer.bias == 0)
    torch.manual_seed(0)
    assert mlp([784, 200, 50])[0].weight.abs().max() <= 1 / math.sqrt(784)   # torch's, untouched


def test_burda_schedule_is_theirs_over_3280_epochs():
    # experiments.py: stage i (1..8) runs 3^(i-1) epochs at 1e-4 * round(10^(1 - (i-1)/7), 1)
    stages = [burda_stage(epoch / 3280) for epoch in range(3280)]
    assert [stages.count(i) for i in range(8)] == [3 ** i for i in range(8)]
    assert [1e-3 * burda_factor(i) for i in range(8)] == pytest.approx(
        [1e-3, 7.2e-4, 5.2e-4, 3.7e-4, 2.7e-4, 1.9e-4, 1.4e-4, 1e-4])


def fake_trainer(epoch: int, elapsed: float = 0.0, lr: float = 1e-3):
    optimizer = torch.optim.Adam([nn.Parameter(torch.zeros(1))], lr=lr)
    return types.SimpleNamespace(epoch=epoch, optimizer=optimizer, context=Context(), elapsed=lambda: elapsed)


def test_burda_schedule_on_a_time_budget():
    # progress = max(epoch / epochs, seconds / budget): with a minute's budget and 40 s on the run's
    # clock (a resumed run's earlier epochs count), the run is 2/3 through: the last stage (from 1/3)
    callback = BurdaSchedule(epochs=3280, minutes=1.0)
    trainer = fake_trainer(epoch=1, elapsed=40.0)
    callback.on_epoch_start(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)
    # 10 s of 60 is 1/6 of the budget: 546.7 of Burda's epochs, stage 6
    trainer = fake_trainer(epoch=1, elapsed=10.0)
    callback.on_epoch_start(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1.4e-4)
    # the epochs' budget ends first: epoch 3 of 4 is 3/4 through, whatever the clock says
    callback = BurdaSchedule(epochs=4, minutes=60.0)
    trainer = fake_trainer(epoch=3)
    callback.on_epoch_start(trainer)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(1e-4)


def test_schedules_are_a_registry():
    # the CLI's choices are the registry's names; each builds its callback from the options
    assert set(LR_SCHEDULES) == {"exponential", "burda"}
    config = FitConfig(lr_schedule="exponential", lr_decay=0.5, epochs=7, minutes=2.0)
    decay = lr_schedule("exponential", config)
    assert isinstance(decay, LRDecay) and decay.decay == 0.5
    burda = lr_schedule("burda", config)
    assert isinstance(burda, BurdaSchedule) and (burda.epochs, burda.minutes) == (7, 2.0)


def test_a_resumed_run_spends_what_is_left_of_its_minutes(tmp_path):
    # --minutes is the whole run's budget, as --epochs is its total: the clock of a resumed run
    # starts at the seconds its earlier epochs took (here 90 s recorded against a 1-minute budget),
    # so it trains one more epoch (the budget stops after the epoch that passes it), not a minute more
    config = FitConfig(dataset="toy2d", likelihood="normal", latent_dim=2, hidden=(8,), batch_size=500, epochs=1,
                       device="cpu")
    fit(config, tmp_path, progress=False)
    metrics = tmp_path / "metrics.jsonl"
    records = read_jsonl(metrics)
    records[0]["train_seconds"] = 90.0
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = fit(config.replace(epochs=50, minutes=1.0), tmp_path, resume=True, progress=False)
    assert [m["epoch"] for m in read_jsonl(metrics)] == [1, 2]
    assert result["stopped_by_time_budget"]


def test_fit_follows_the_schedule_and_adam_settings(tmp_path):
    # 4 epochs: progress 0, 1/4, 1/2, 3/4 of Burda's 3,280 epochs = stages 0, 6, 7, 7
    config = FitConfig(dataset="toy2d", likelihood="normal", latent_dim=2, hidden=(8,), batch_size=500, epochs=4,
                       lr=1e-2, lr_schedule="burda", adam_beta1=0.99, adam_eps=1e-4, device="cpu",
                       activation="tanh", init="glorot")
    fit(config, tmp_path, progress=False)
    assert [m["lr"] for m in read_jsonl(tmp_path / "metrics.jsonl")] == pytest.approx([1e-2, 1.4e-3, 1e-3, 1e-3])
    group = load_checkpoint(tmp_path)["optimizer"]["param_groups"][0]
    assert tuple(group["betas"]) == (0.99, 0.999) and group["eps"] == 1e-4


def test_refused_combinations():
    with pytest.raises(UsageError, match="lr-decay|lr_decay"):
        FitConfig(lr_schedule="burda", lr_decay=0.99).validate()
    with pytest.raises(UsageError, match="activation"):
        FitConfig(model="conv", activation="tanh").validate()
