"""What a model, a guide, a per-point family and an objective may declare, in one place: every
hook pyrovae reads, and what it assumes when a program does not declare it.

A program declares a hook as an attribute or a method (of its class, of the instance, or of a
plain function: ``guide.per_datapoint = True``). pyrovae never tests a program's type: it asks
:func:`declared` (or :func:`can`, for the yes/no capabilities), which reads only the hooks listed
here, with their defaults; asking for anything else is a programming error. The ``Protocol``
classes spell out the same hooks with their signatures, for readers and type checkers. One thing
is read from a program's signature instead: whether it takes ``index=`` (the batch's rows; the
rule is :func:`pyrovae.core.programs.accepts_index`).

A new family is one file that sets the hooks it needs, and one registry line.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn

from .errors import UsageError
from .options import NoOptions


@dataclass(frozen=True)
class Hook:
    """A hook of a role: its name, the value assumed where it is not declared, and what it means."""

    name: str
    default: Any
    means: str


def _table(*hooks: Hook) -> dict[str, Hook]:
    return {hook.name: hook for hook in hooks}


GUIDE = _table(
    Hook("amortized", True, "q(z | x) for any x from shared parameters (an encoder): it can encode test points"),
    Hook("per_datapoint", False, "parameters per training row: it takes index= and is stepped row-sparse (local "
                                  "steps set by LocalStepOptions, read by name from the config)"),
    Hook("mean_field", False, "its latent sites are independent given x: closed-form KL per site is exact"),
    Hook("jit_compatible", True, "its Python can be traced by Pyro's JIT (it does not differentiate inside itself)"),
    Hook("row_parameters", None, "method () -> the parameters whose first dimension indexes training rows"),
    Hook("local_family", None, "method (batch, init) -> its own per-point family for q* (else Gaussian tables)"),
    Hook("site_dist", None, "method (site, parent value) -> q(site | parent) of an encoder: what a model that mixes "
                            "the guide's q in its prior (the VampPrior) evaluates at its pseudo-inputs"),
    Hook("cli_help", "", "one line for the CLI's --guide help"),
    Hook("Options", NoOptions, "the dataclass of its options (pyrovae.core.options); from_options(options, model, num_data) builds it"),
)
MODEL = _table(
    Hook("latent_layers", None, "method () -> [LatentLayer]: its latent sites in sampling order, for the built-in guides"),
    Hook("features", None, "method () -> (nn.Module, n): a new network from the data's rows [..., data_dim] to n "
                           "features [..., n], which the built-in guides put in front of the encoder of each latent "
                           "layer conditioned on x (a convolutional model's conv layers); None: the rows themselves"),
    Hook("attach_guide", None, "method (guide) -> None: a model whose prior uses the guide's q (the VampPrior) gets "
                               "it once both are built; it may refuse a guide it cannot use (ValueError)"),
    Hook("data_dim", None, "numbers per datapoint of the observed site (built-in models)"),
    Hook("initialize_from_data", None, "method (x) -> None: what a new run sets from its training rows x "
                                       "[N, data_dim] before the first step (a decoder's output bias)"),
    Hook("cli_help", "", "one line for the CLI's --model help"),
    Hook("Options", NoOptions, "the dataclass of its options (pyrovae.core.options); from_options(options, data_dim, "
                               "image_shape) builds it, image_shape (C, H, W) when the rows are images, else None"),
)
LOCAL_FAMILY = _table(   # a per-point guide fitted with the model frozen (compare's q*); also a GUIDE
    Hook("param_groups", None, "method (lr) -> Adam parameter groups, to step some parameters more gently"),
    Hook("lr_warmup", 0, "steps of a linear learning-rate ramp at the start of a per-point fit"),
)
OBJECTIVE = _table(
    Hook("num_particles", 1, "draws of z per datapoint in each step"),
)
ROLES = {"guide": GUIDE, "model": MODEL, "local_family": LOCAL_FAMILY, "objective": OBJECTIVE}


def declared(program: object, role: str, name: str) -> Any:
    """``program``'s ``name`` hook of ``role`` as it declares it, else the default listed here."""
    hooks = ROLES[role]
    if name not in hooks:
        raise KeyError(f"{name!r} is not a hook of a {role} (pyrovae.core.contract.{role.upper()})")
    return getattr(program, name, hooks[name].default)


def required(program: object, role: str, name: str, by: str) -> Any:
    """``program``'s ``name`` hook of ``role``, which ``by`` (what needs it, e.g. 'AmortizedGuide')
    cannot do without: a :class:`UsageError` naming the program and the fix where it declares none."""
    value = declared(program, role, name)
    if value is None:
        raise UsageError(f"{by} needs the {role}'s {name} ({ROLES[role][name].means}), which "
                         f"{type(program).__name__} does not declare; declare it on the {role} "
                         f"(pyrovae.core.contract.{role.upper()})")
    return value


CAPABILITIES = ("amortized", "per_datapoint", "mean_field", "jit_compatible")   # the yes/no hooks of a guide


def can(program: object, capability: str) -> bool:
    """A yes/no capability of a guide (one of ``CAPABILITIES``)."""
    if capability not in CAPABILITIES:
        raise KeyError(f"{capability!r} is not a yes/no capability of a guide (pyrovae.core.contract.CAPABILITIES)")
    return bool(declared(program, "guide", capability))


# ---------------------------------------------------------------------------- the same, as Protocols

class Guide(Protocol):
    """A Pyro program ``guide(*batch[, index=])`` sampling the model's latent sites in the data plate."""

    amortized: bool
    per_datapoint: bool
    mean_field: bool
    jit_compatible: bool
    cli_help: str

    def __call__(self, *batch: torch.Tensor, index: torch.Tensor | None = None) -> None: ...
    @classmethod
    def from_options(cls, options: Any, model: "Model", num_data: int) -> "Guide": ...   # a registered family
    def row_parameters(self) -> list[nn.Parameter]: ...
    def local_family(self, batch: Sequence[torch.Tensor], init: str) -> nn.Module: ...
    def site_dist(self, name: str, parent: torch.Tensor) -> torch.distributions.Distribution: ...


class Model(Protocol):
    """A Pyro program ``model(*batch)``: p(z) and p(x | z), every sample site in the data plate."""

    data_dim: int
    cli_help: str

    def __call__(self, *batch: torch.Tensor) -> None: ...
    @classmethod
    def from_options(cls, options: Any, data_dim: int, image_shape: tuple[int, ...] | None) -> "Model": ...   # registered
    def latent_layers(self) -> list: ...
    def features(self) -> tuple[nn.Module, int]: ...
    def attach_guide(self, guide: Guide) -> None: ...


class LocalFamily(Guide, Protocol):
    """A per-point guide over the rows of the data it is fitted to."""

    lr_warmup: int

    def param_groups(self, lr: float) -> list[dict]: ...


class Objective(Protocol):
    """A Pyro ELBO: ``differentiable_loss(model, guide, *args, **kwargs)``."""

    num_particles: int

    def differentiable_loss(self, model: Callable, guide: Callable, *args, **kwargs) -> torch.Tensor: ...
