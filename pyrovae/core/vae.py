"""A VAE as pyrovae holds it: a Pyro model and a guide in one ``nn.Module`` (one ``state_dict``,
one device), with the two programs bound once for the objectives.

The programs may be written as Pyro users write them for ``SVI`` (:mod:`pyrovae.programs`):
modules, bound methods of a module, or functions using ``pyro.module`` / ``pyro.param``. Their
parameters all end up here: a module's (or a bound method's owner's) as submodules, and
``pyro.param`` sites that no module owns adopted into :attr:`VAE.pyro_params` by
:meth:`VAE.prepare`, which runs both programs once, checks them, and must come before training
or loading a checkpoint.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable, Iterator

import pyro
import torch
from torch import nn

from .contract import can, declared
from .noise import forked_rng
from .programs import (CHECK_ROWS, Batch, Data, ParamState, Program, ProgramInfo, as_batch, as_program, bind,
                       check_programs, describe, first_rows, param_scope, param_sites, refuse_discrete)


def _key(name: str) -> str:
    """A param-store name as a ParameterDict key (which may hold no dots)."""
    return name.replace(".", "·")


class VAE(nn.Module):
    """``model`` p_θ(x, z) and ``guide`` q(z | x): any pair that follows :mod:`pyrovae.programs`
    (``nn.Module`` s, bound methods of a module, or functions)."""

    def __init__(self, model: Callable, guide: Callable):
        super().__init__()
        self.model, self.guide = as_program(model), as_program(guide)
        owners = []
        for program in (self.model, self.guide):
            owner = program.owner if isinstance(program, Program) else None
            if owner is not None and all(owner is not other for other in owners):
                owners.append(owner)
        self.owners = nn.ModuleList(owners)   # each bound method's module, once
        self.pyro_params = nn.ParameterDict()   # adopted pyro.param sites, unconstrained, by _key(name)
        self._store_names: dict[str, str] = {}   # _key(name) -> the param store's name
        self._constraints: dict[str, object] = {}
        self._registered: list[str] | None = None
        self._bound: dict[bool, tuple[Callable, Callable]] = {}
        self.info: ProgramInfo | None = None

    # -------------------------------------------------------------------- the programs, bound

    def bound(self, register: bool = False) -> tuple[Callable, Callable]:
        """(model, guide) in the form ``f(index, beta, *batch, num_data=N)``, the same objects on
        every call. ``register``: each call also puts every parameter in Pyro's param store, under
        one name each (for the JIT, which finds a traced loss's inputs there)."""
        if register not in self._bound:
            registered = self._registered_params if register else None
            self._bound[register] = (bind(self.model, self.param_state, registered),
                                     bind(self.guide, self.param_state, registered))
        return self._bound[register]

    def param_state(self) -> ParamState:
        """The adopted ``pyro.param`` sites as the param store holds them: (unconstrained, constraints)."""
        return ({self._store_names[key]: p for key, p in self.pyro_params.items()},
                {self._store_names[key]: self._constraints[self._store_names[key]] for key in self.pyro_params})

    @contextlib.contextmanager
    def param_store(self) -> Iterator[None]:
        """A scope of Pyro's param store holding this VAE's adopted parameters (see
        :func:`pyrovae.programs.param_scope`): training opens one for its whole run, so the
        programs' own registrations persist between steps as in ``SVI``."""
        with param_scope(*self.param_state()):
            yield

    def _registered_params(self, index: torch.Tensor | None, batch: tuple[torch.Tensor, ...]
                           ) -> list[tuple[str, nn.Parameter]]:
        """The parameters the programs do not register themselves, each under one name (a
        parameter under two names breaks Pyro's JIT): found once, on the first call's batch, by
        running both programs so that their own ``pyro.module`` / ``pyro.param`` calls register what
        they use, then naming every other trainable parameter of this VAE."""
        if self._registered is None:
            self._registered = []   # in progress: the probe's own calls register nothing
            model, guide = self.bound()
            small, small_index = first_rows(batch, index)
            with forked_rng(small[0].device):
                param_sites(guide, small_index, small)
                param_sites(model, small_index, small)
            store = pyro.get_param_store()
            # named as pyro.module(part, ...) would: model$$$decoder.0.weight, guide$$$encoders.z.0.bias
            self._registered = [("$$$".join(name.split(".", 1)), param) for name, param in self.named_parameters()
                                if param.requires_grad and store.param_name(param) is None]
        return self._registered

    # -------------------------------------------------------------------- before any work

    def prepare(self, batch: Batch, index: torch.Tensor | None = None) -> ProgramInfo:
        """Check the programs on the first rows of ``batch`` (:func:`pyrovae.programs.check_programs`)
        and adopt every ``pyro.param`` site that no module here owns, so it is optimized,
        checkpointed and restored with the rest. Call before building an optimizer or loading a
        state dict; calling again is harmless."""
        self.info = None
        info = self.check(batch, index)
        model, guide = self.bound()
        small, small_index = first_rows(batch, index)
        with self.param_store():
            found = [*param_sites(guide, small_index, small), *param_sites(model, small_index, small)]
            # the store's unconstrained tensors (get_state drops the weakrefs Pyro puts on values)
            state = pyro.get_param_store().get_state()
            owned = {id(p) for p in self.parameters()}
            for name in dict.fromkeys(found):
                unconstrained = state["params"][name]
                if id(unconstrained) in owned:
                    continue
                adopted = unconstrained if isinstance(unconstrained, nn.Parameter) else \
                    nn.Parameter(unconstrained.detach().clone())
                self.pyro_params[_key(name)] = adopted
                self._store_names[_key(name)] = name
                self._constraints[name] = state["constraints"][name]
                owned.add(id(adopted))
        return info

    def check(self, batch: Batch, index: torch.Tensor | None = None, continuous: bool = False) -> ProgramInfo:
        """What :meth:`prepare` found, or the check alone on ``batch`` (no adoption) for a VAE that
        was not prepared: estimators call this before any work (``continuous``: AIS, which
        refuses discrete latents)."""
        if self.info is None:
            if index is None and can(self.guide, "per_datapoint"):
                index = torch.arange(min(CHECK_ROWS, batch[0].shape[0]), device=batch[0].device)
            with forked_rng(batch[0].device, seed=0):   # the check's draws are not the caller's
                self.info = check_programs(*self.bound(), batch, index,
                                           names=(describe(self.model), describe(self.guide)), continuous=continuous)
        elif continuous:
            refuse_discrete(self.info)
        return self.info

    # -------------------------------------------------------------------- what it can do

    def can(self, capability: str) -> bool:
        """What the guide can do (:mod:`pyrovae.core.contract`)."""
        return can(self.guide, capability)

    def row_parameters(self) -> list[nn.Parameter]:
        """Parameters whose first dimension indexes training rows (a per-datapoint guide's tables)."""
        rows = declared(self.guide, "guide", "row_parameters")
        return list(rows()) if rows is not None else []

    @property
    def device(self) -> torch.device:
        """Where the parameters (or, for programs without any, the buffers) live; CPU if neither."""
        tensor = next(self.parameters(), None)
        tensor = next(self.buffers(), None) if tensor is None else tensor
        return tensor.device if tensor is not None else torch.device("cpu")

    @property
    def dtype(self) -> torch.dtype:
        tensor = next(self.parameters(), None)
        return tensor.dtype if tensor is not None else torch.get_default_dtype()

    def as_batch(self, data: Data) -> tuple[torch.Tensor, ...]:
        """``data`` (a tensor, or row-first tensors) as this VAE computes with it: on its device, its
        floating tensors in its dtype (labels and other integer tensors keep theirs)."""
        return tuple(t.to(device=self.device, dtype=self.dtype if t.is_floating_point() else t.dtype)
                     for t in as_batch(data))

    def describe(self) -> str:
        """The programs as their trace shows them (after :meth:`prepare`), else their names."""
        return self.info.describe() if self.info is not None else f"{describe(self.model)}, {describe(self.guide)}"


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No gradients for ``module``'s parameters inside the block, e.g. so only a local q moves
    (eval mode too). Restores each parameter's flag and the mode on exit."""
    flags, training = [(p, p.requires_grad) for p in module.parameters()], module.training
    for p, _ in flags:
        p.requires_grad_(False)
    module.train(False)
    try:
        with warnings.catch_warnings():
            # pyro.module() in a user's program warns about each frozen parameter of a module
            # that is in training mode (one pyrovae does not own, e.g. a global one)
            warnings.filterwarnings("ignore", message=".*was not registered in the param store because requires_grad=False")
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        module.train(training)
