"""The declared family contract (issue 21): a family built in Python with only its required
arguments is the one the CLI builds by default (a default lives in its Options only), a built-in
guide refuses a model that declares none of what it is built from, and every hook pyrovae reads
by name is one that pyrovae.core.contract lists."""
from __future__ import annotations

import ast
import functools
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import pyrovae
from pyrovae.core.contract import CAPABILITIES, ROLES, declared
from pyrovae.core.errors import UsageError
from pyrovae.guides import (GUIDES, AmortizedGuide, FlowGuide, FullCovarianceGuide, MeanFieldGuide,
                            SemiAmortizedGuide)
from pyrovae.models import MODELS, ConvModel, TwoLayerModel, VAEModel
from pyrovae.models.vampprior import VampPriorModel

LATENT, DATA, IMAGE, ROWS = 3, 64, (1, 8, 8), 10

# each family with only its required arguments, as a Python user builds it
MODEL_BY_HAND = {"vae": lambda: VAEModel(LATENT, DATA), "two-layer": lambda: TwoLayerModel(LATENT, DATA),
                 "vampprior": lambda: VampPriorModel(LATENT, DATA), "conv": lambda: ConvModel(LATENT, IMAGE)}
GUIDE_BY_HAND = {
    "amortized": lambda model: AmortizedGuide(model.latent_layers(), model.data_dim),
    "full-covariance": lambda model: FullCovarianceGuide(model.latent_layers(), model.data_dim),
    "flow": lambda model: FlowGuide(model.latent_layers(), model.data_dim),
    "semi-amortized": lambda model: SemiAmortizedGuide(model.latent_layers(), model.data_dim, model),
    # sparse: how a training guide indexes its tables (from_options' choice), not an option
    "meanfield": lambda model: MeanFieldGuide({layer.name: layer.dim for layer in reversed(model.latent_layers())},
                                              ROWS, sparse=True),
}


def hyper_parameters(build) -> tuple[dict, dict]:
    """What a module is: its plain attributes, and its tensors when built from seed 0 (so the
    widths, activations, initialisation and fixed sigma all show)."""
    torch.manual_seed(0)
    module = build()
    plain = {name: value for name, value in vars(module).items()
             if not name.startswith("_") and isinstance(value, (int, float, str, bool, tuple, list, dict, type(None)))}
    return plain, {name: tensor.clone() for name, tensor in module.state_dict().items()}


def assert_same(by_hand: tuple[dict, dict], by_options: tuple[dict, dict]) -> None:
    assert by_hand[0] == by_options[0]
    assert by_hand[1].keys() == by_options[1].keys()
    for name, tensor in by_hand[1].items():
        assert torch.equal(tensor, by_options[1][name]), name


def test_every_family_is_listed_here():
    assert MODEL_BY_HAND.keys() == MODELS.keys() and GUIDE_BY_HAND.keys() == GUIDES.keys()


@pytest.mark.parametrize("name", list(MODELS))
def test_a_model_built_by_hand_is_the_cli_default(name):
    family = MODELS[name]
    options = declared(family, "model", "Options")(latent_dim=LATENT)
    image_shape = IMAGE if name == "conv" else None
    assert_same(hyper_parameters(MODEL_BY_HAND[name]),
                hyper_parameters(lambda: family.from_options(options, DATA, image_shape)))


@pytest.mark.parametrize("name", list(GUIDES))
def test_a_guide_built_by_hand_is_the_cli_default(name):
    family, model = GUIDES[name], VAEModel(LATENT, DATA)
    options = declared(family, "guide", "Options")()
    assert_same(hyper_parameters(lambda: GUIDE_BY_HAND[name](model)),
                hyper_parameters(lambda: family.from_options(options, model, ROWS)))


def test_the_two_layer_model_takes_its_options_widths():
    assert TwoLayerModel(LATENT, DATA).hidden == TwoLayerModel.Options().hidden == (400,)


class NoLayers(nn.Module):
    """A model of one's own, which declares no latent layers."""

    def forward(self, x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)


@pytest.mark.parametrize("name", list(GUIDES))
def test_a_built_in_guide_names_the_model_without_latent_layers(name):
    family = GUIDES[name]
    with pytest.raises(UsageError, match=r"needs the model's latent_layers .*NoLayers does not declare; declare it "
                                         r"on the model \(pyrovae.core.contract.MODEL\)"):
        family.from_options(declared(family, "guide", "Options")(), NoLayers(), ROWS)


# ---------------------------------------------------------------------------- hooks read by name

SOURCES = sorted(Path(pyrovae.__file__).parent.rglob("*.py"))
HOOK_NAMES = {name for hooks in ROLES.values() for name in hooks}


@functools.cache
def _all_calls() -> list[tuple[str, str, ast.Call]]:
    """(file, name called, call) of every call in pyrovae/."""
    found = []
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                found.append((path.name, func.id if isinstance(func, ast.Name) else getattr(func, "attr", None), node))
    return found


def _calls(name: str):
    """(file, call) of every call of a function or method ``name`` in pyrovae/."""
    return ((where, call) for where, called, call in _all_calls() if called == name)


def _literal(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_every_hook_asked_for_is_listed_in_the_contract():
    asked = 0
    for function in ("declared", "required"):
        for where, call in _calls(function):
            role, name = (_literal(arg) for arg in call.args[1:3])
            if role is not None and name is not None:
                asked += 1
                assert name in ROLES[role], f"{where}:{call.lineno} asks for {name!r}, not a hook of a {role}"
    for where, call in _calls("can"):
        capability = _literal(call.args[-1]) if call.args else None
        if capability is not None:
            asked += 1
            assert capability in CAPABILITIES, f"{where}:{call.lineno} asks whether it can {capability!r}"
    assert asked > 20   # the scan sees the calls


def test_no_hook_is_read_around_the_contract():
    for function in ("getattr", "hasattr"):
        for where, call in _calls(function):
            name = _literal(call.args[1]) if len(call.args) > 1 else None
            assert name not in HOOK_NAMES, f"{where}:{call.lineno} reads the hook {name!r} by {function}"
