"""What pyrovae asks of a Pyro model and guide, how it calls them, and how it checks them first.

A model is a Pyro program ``model(*batch)`` over a minibatch ``batch = (x,)`` or ``(x, y, ...)``
(tensors whose first dimension indexes datapoints) with every sample site inside one plate
named ``DATA_PLATE`` at dim -1: latent sites, and the observed site(s) with ``obs=x``. A guide
is a program with the same arguments whose sample sites are the model's latent sites; a guide
that keeps parameters per datapoint also takes ``index=`` (the rows of the batch in the data set).

A program may be what Pyro users hand to ``SVI``: an ``nn.Module``, a bound method of one (its
parameters are found through the owner), or a plain function; its parameters may be its
modules' own, registered with ``pyro.module``, or ``pyro.param`` sites. :func:`as_program`
makes each an ``nn.Module``; the VAE adopts ``pyro.param`` sites that no module owns
(:meth:`pyrovae.vae.VAE.prepare`), so they are trained and checkpointed like any parameter.

pyrovae calls programs through :func:`bind`, in the form ``program(index, beta, *batch, num_data=N)``
that Pyro's objectives (and their JIT) take: tensors positional, numbers as keywords. Binding adds

- the scale N / B of a minibatch of B rows from N (as a subsampled plate would),
- ``beta``, the KL coefficient, on the latent sites of model and guide, so the objective is
  reconstruction − β KL (Higgins et al. 2017); β = 1 is the true ELBO, and
- a scope of Pyro's param store holding the VAE's adopted ``pyro.param`` values, so a program
  reads them wherever it runs and a call leaves the caller's store as it found it,

so user programs need none of them. What a model or guide can do (per-datapoint tables,
mean-field structure, an encoder for new data) is read from the hooks it declares
(:mod:`pyrovae.core.contract`), never from its type. :func:`check_programs` runs both programs once on a few rows and refuses, before
any work, what pyrovae cannot serve, naming the site, the program and the fix.
"""
from __future__ import annotations

import contextlib
import inspect
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, Mapping, NamedTuple, Sequence, Union

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import biject_to
from torch.distributions.mixture_same_family import MixtureSameFamilyConstraint

from .errors import UsageError, option

if TYPE_CHECKING:   # the VAE binds its programs here: a type only
    from .vae import VAE

DATA_PLATE = "data"
PARTICLE_PLATE, PARTICLE_DIM = "particles", -2   # where estimators vectorize draws: left of the data plate
Batch = Sequence[torch.Tensor]
Data = Union[torch.Tensor, Sequence[torch.Tensor]]

class LatentLayer(NamedTuple):
    """A latent site as the built-in guides see it: q(name | parent) from an MLP with ``hidden``
    widths, its ``activation`` and ``init`` the model's (:mod:`pyrovae.core.nets`); ``parent`` is
    ``"x"`` (the data) or the name of an earlier latent site."""

    name: str
    dim: int
    parent: str
    hidden: tuple[int, ...]
    activation: str = "relu"
    init: str = "torch"


def data_plate(x: torch.Tensor) -> pyro.plate:
    """The plate over the rows of a minibatch, at dim -1."""
    return pyro.plate(DATA_PLATE, x.shape[0], dim=-1)


def as_batch(data: Data) -> tuple[torch.Tensor, ...]:
    """A tensor or a sequence of tensors, as a tuple of tensors with rows first."""
    return (data,) if isinstance(data, torch.Tensor) else tuple(data)


def rows_of(batch: Batch, rows) -> tuple[torch.Tensor, ...]:
    """The rows ``rows`` (slice, range or index tensor) of every tensor of ``batch``."""
    if isinstance(rows, range):
        rows = slice(rows.start, rows.stop)
    return tuple(t[rows] for t in batch)


def num_rows(batch: Batch) -> int:
    return batch[0].shape[0]


# ---------------------------------------------------------------------------- programs as modules

class Program(nn.Module):
    """A Pyro program that is not an ``nn.Module`` itself: a bound method of a module, or a
    function. ``forward`` calls it; attributes it does not have are read from the callable (so
    ``guide.per_datapoint = True`` on a function declares a capability). The owner of a bound
    method is not registered here: :class:`~pyrovae.vae.VAE` registers each owner once, so a model
    and a guide of one module share its parameters without a second copy in the state dict."""

    def __init__(self, fn: Callable):
        super().__init__()
        object.__setattr__(self, "fn", fn)
        owner = getattr(fn, "__self__", None)
        object.__setattr__(self, "owner", owner if isinstance(owner, nn.Module) else None)

    def forward(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            fn = self.__dict__.get("fn")
            if fn is None or name.startswith("__"):
                raise
            return getattr(fn, name)

    def describe(self) -> str:
        """'Owner.method' or the function's qualified name."""
        return getattr(self.fn, "__qualname__", type(self.fn).__name__)


def as_program(program: Callable) -> nn.Module:
    """``program`` as an ``nn.Module``: itself if it is one, else wrapped in a :class:`Program`."""
    if isinstance(program, nn.Module):
        return program
    if not callable(program):
        raise UsageError(f"a model or guide must be a Pyro program (a callable), got {type(program).__name__}")
    return Program(program)


def describe(program: nn.Module) -> str:
    """What a program is, for captions and ``show``: its class, method or function name."""
    return program.describe() if isinstance(program, Program) else type(program).__name__


def accepts_index(program: Callable) -> bool:
    """Whether pyrovae passes ``program`` the rows of a batch as ``index=`` (table guides take it).
    The rule, read from the signature rather than declared: the function called (a module's
    ``forward``, a :class:`Program`'s function, or the callable itself) has a parameter named
    ``index`` or takes ``**kwargs``; a signature Python cannot read takes none."""
    target = program.fn if isinstance(program, Program) else \
        program.forward if isinstance(program, torch.nn.Module) else program
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    return "index" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


# ---------------------------------------------------------------------------- Pyro's param store

ParamState = tuple[Mapping[str, torch.Tensor], Mapping[str, object]]   # (unconstrained values, constraints)
# how many param_scope blocks are open (programs inside one need no scope of their own): one count
# for the process, as Pyro's param store is one for the process
_open_scopes = 0


@contextlib.contextmanager
def param_scope(params: Mapping[str, torch.Tensor] | None = None,
                constraints: Mapping[str, object] | None = None) -> Iterator[None]:
    """Pyro's param store for the life of the block: the caller's entries plus ``params`` (the
    unconstrained tensors themselves, so gradients reach them), with their ``constraints``.
    What programs register inside (``pyro.module``, new ``pyro.param`` sites) is dropped on exit,
    and the caller's store comes back as it was."""
    store = pyro.get_param_store()
    state = store.get_state()
    merged = {"params": {**state["params"], **(params or {})},
              "constraints": {**state["constraints"], **(constraints or {})}}
    global _open_scopes
    with store.scope(state=merged):
        _open_scopes += 1
        try:
            yield
        finally:
            _open_scopes -= 1


def put_in_store(params: Mapping[str, torch.Tensor], constraints: Mapping[str, object]) -> None:
    """``params`` (unconstrained, by identity) in the param store that is open, where missing."""
    store = pyro.get_param_store()
    missing = [name for name in params if store.param_name(params[name]) != name]
    if missing:
        store.set_state({"params": {name: params[name] for name in missing},
                         "constraints": {name: constraints[name] for name in missing}})


def in_param_scope() -> bool:
    return _open_scopes > 0


class ScaleLatents(Messenger):
    """Multiplies the log density of every latent (not observed) sample site by ``beta``."""

    def __init__(self, beta: float | torch.Tensor):
        super().__init__()
        self.beta = beta

    def _process_message(self, msg) -> None:
        if msg["type"] == "sample" and not msg["is_observed"] and not site_is_subsample(msg):
            msg["scale"] = self.beta * msg["scale"]


Registered = Callable[[torch.Tensor | None, tuple[torch.Tensor, ...]], Sequence[tuple[str, torch.Tensor]]]


def bind(program: Callable, state: Callable[[], ParamState] | None = None,
         registered: Registered | None = None) -> "BoundProgram":
    """``program(*batch[, index=])`` as ``f(index, beta, *batch, num_data=None)``.

    ``state()``: the adopted ``pyro.param`` values the program must read (see :func:`param_scope`;
    outside an open scope each call opens its own). ``registered(index, batch)``: (name, parameter)
    pairs each call puts in (or touches in) the param store, so Pyro's JIT objectives, which find
    the parameters of a traced loss there, pass them in as inputs. Bind once and reuse the
    result: the JIT keys its compiled loss on the id of the function.
    """
    return BoundProgram(program, state, registered)


class BoundProgram:
    """``program`` in the calling form of Pyro's objectives, ``f(index, beta, *batch, num_data=N)``
    (see :func:`bind`); ``program`` is what its capabilities are read from."""

    def __init__(self, program: Callable, state: Callable[[], ParamState] | None, registered: Registered | None):
        self.program, self.state, self.registered = program, state, registered
        self.wants_index = accepts_index(program)

    def __call__(self, index: torch.Tensor | None, beta: float | torch.Tensor, *batch: torch.Tensor,
                 num_data: int | None = None):
        if self.registered is None and not in_param_scope():
            scope = param_scope(*(self.state() if self.state else ({}, {})))
        else:
            # inside an open scope (a training run's, an estimator's), or for Pyro's JIT, which looks
            # parameters up in the store outside the program: they go in the store that is open
            scope = contextlib.nullcontext()
            if self.state is not None:
                put_in_store(*self.state())
            for name, param in self.registered(index, batch) if self.registered is not None else ():
                if param.requires_grad:   # registering would switch a frozen parameter's gradient on
                    pyro.param(name, param)
        with scope:
            scale = 1.0 if num_data is None else num_data / batch[0].shape[0]
            with poutine.scale(scale=scale), ScaleLatents(beta):
                return self.program(*batch, index=index) if self.wants_index else self.program(*batch)


def program_of(fn: Callable) -> object:
    """The program behind a bound program (or ``fn`` itself): what capabilities are read from."""
    return fn.program if isinstance(fn, BoundProgram) else fn


# ---------------------------------------------------------------------------- the check before any work

@dataclass
class SiteInfo:
    """A sample site as a trace of one datapoint shows it."""

    event_shape: tuple[int, ...]
    support: str
    distribution: str
    discrete: bool = False

    @property
    def size(self) -> int:
        return math.prod(self.event_shape)


@dataclass
class ProgramInfo:
    """What a model and guide are, read from one run of each: their latent and observed sites
    (event shapes, supports), the data's dimension per point (the observed events' size, which
    bits per dimension divide by), and names for captions."""

    model: str
    guide: str
    latent: dict[str, SiteInfo] = field(default_factory=dict)
    observed: dict[str, SiteInfo] = field(default_factory=dict)

    @property
    def data_dim(self) -> int:
        return sum(site.size for site in self.observed.values())

    @property
    def latent_dim(self) -> int:
        return sum(site.size for site in self.latent.values())

    def describe(self) -> str:
        """'VAE.model, VAE.guide; latent z[50]; x ~ Bernoulli[784]'."""
        shape = lambda s: "[" + ",".join(map(str, s.event_shape)) + "]" if s.event_shape else ""  # noqa: E731
        latent = ", ".join(f"{name}{shape(site)}" for name, site in self.latent.items())
        observed = ", ".join(f"{name} ~ {site.distribution}{shape(site)}" for name, site in self.observed.items())
        return f"{self.model}, {self.guide}; latent {latent or 'none'}; {observed}"

    def to_dict(self) -> dict:
        return {"model": self.model, "guide": self.guide,
                "latent": {n: list(s.event_shape) for n, s in self.latent.items()},
                "observed": {n: list(s.event_shape) for n, s in self.observed.items()},
                "supports": {n: s.support for n, s in self.latent.items()},
                "distributions": {n: s.distribution for n, s in {**self.latent, **self.observed}.items()},
                "data_dim": self.data_dim, "latent_dim": self.latent_dim}


CHECK_ROWS = 64   # rows of the batch the check runs the programs on (enough to expose a subsampling plate)


def base_support(support) -> tuple[object, int]:
    """(the constraint on each number, event dims) of a support, through ``independent`` and
    through a mixture's constraint (a mixture lives where its components do)."""
    dims = 0
    while True:
        if isinstance(support, torch.distributions.constraints.independent):
            dims += support.reinterpreted_batch_ndims
        elif not isinstance(support, MixtureSameFamilyConstraint):
            return support, dims
        support = support.base_constraint


def is_real(support) -> bool:
    """Whether ``support`` is the real line (or a product of real lines)."""
    return base_support(support)[0] is torch.distributions.constraints.real


def unconstrained_shape(event_shape: torch.Size, support) -> torch.Size:
    """The event shape of a latent's unconstrained coordinates, ``biject_to(support)``'s domain:
    its own for a real or positive latent, K − 1 numbers for a K-simplex."""
    return torch.Size(event_shape if is_real(support) else biject_to(support).inverse_shape(event_shape))


def _support_key(support) -> tuple[object, int]:
    """(where each number lives, event dims) of a support: constraints have no equality of their
    own, and two that differ by a set of measure zero (``positive`` and ``nonnegative``, an open and
    a half-open interval) are the same support for a density: a LogNormal q serves a HalfNormal or
    Gamma p(z)."""
    base, dims = base_support(support)
    constraints = torch.distributions.constraints
    lower, upper = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if isinstance(base, (constraints.greater_than, constraints.greater_than_eq)):
        return ("above", _bound(lower)), dims
    if isinstance(base, constraints.less_than):
        return ("below", _bound(upper)), dims
    if isinstance(base, (constraints.interval, constraints.half_open_interval)):
        return ("between", _bound(lower), _bound(upper)), dims
    return repr(base), dims


def _bound(value) -> tuple[float, ...]:
    """A constraint's bound (a number, or a tensor of them, as Uniform(low, high) has) as a key."""
    return tuple(torch.as_tensor(value, dtype=torch.float64).flatten().tolist())


def _site_name(where: str, name: str) -> str:
    return f"the {where}'s site {name!r}"


def _check_plate(where: str, name: str, site: dict, rows: int) -> None:
    frames = [frame for frame in site["cond_indep_stack"] if frame.vectorized]
    plate = next((frame for frame in frames if frame.name == DATA_PLATE), None)
    if plate is None:
        others = [frame for frame in frames if frame.size == rows or frame.full_size == rows]
        if others:
            raise UsageError(f"{_site_name(where, name)} is in pyro.plate({others[0].name!r}, ...), but pyrovae's data "
                             f"plate is named {DATA_PLATE!r}: write pyro.plate({DATA_PLATE!r}, x.shape[0]) in both "
                             "model and guide")
        raise UsageError(f"{_site_name(where, name)} is outside pyro.plate({DATA_PLATE!r}, x.shape[0]): pyrovae needs "
                         "one value per datapoint at every site (a global latent or parameter site is not supported); "
                         f"put the site inside `with pyro.plate({DATA_PLATE!r}, x.shape[0]):` (a global quantity can "
                         "be an nn.Parameter or pyro.param instead)")
    if plate.full_size is not None and plate.size != plate.full_size:
        raise UsageError(f"the {where}'s plate {DATA_PLATE!r} subsamples ({plate.size} of {plate.full_size} rows): "
                         f"{SUBSAMPLED}")
    if plate.size != rows:
        raise UsageError(f"the {where}'s plate {DATA_PLATE!r} has size {plate.size}, but the batch has {rows} rows: "
                         f"pyrovae passes minibatches, so write pyro.plate({DATA_PLATE!r}, x.shape[0])")
    if plate.dim != -1:
        raise UsageError(f"the {where}'s plate {DATA_PLATE!r} is at dim {plate.dim}; pyrovae needs it at dim -1 "
                         "(per-datapoint dimensions go in the event: .to_event(n), not inner plates)")
    inner = [frame.name for frame in frames if frame.name != DATA_PLATE]
    if inner:
        raise UsageError(f"{_site_name(where, name)} is in plate {inner[0]!r} besides {DATA_PLATE!r}; pyrovae reads "
                         "one log density per datapoint: make those dimensions part of the event with .to_event(n)")


SUBSAMPLED = ("pyrovae draws the minibatches itself (--batch-size) and scales them to the data set, so every row "
              "of the batch must be in the plate; drop subsample_size (and index the data with all its rows)")


def _trace(where: str, fn: Callable, index, batch) -> poutine.Trace:
    try:
        with poutine.block():
            return poutine.trace(fn).get_trace(index, 1.0, *batch)
    except UsageError:
        raise
    except ValueError as error:
        if "subsample_size" in str(error):   # Pyro's own complaint about a plate's subsample_size
            raise UsageError(f"the {where}'s data plate subsamples (subsample_size): {SUBSAMPLED}") from None
        raise _failed(where, error, batch) from None
    except (RuntimeError, TypeError, AssertionError, KeyError, IndexError) as error:
        raise _failed(where, error, batch) from None


def _asks_subsample(trace: poutine.Trace) -> bool:
    """Whether the trace's data plate was given a ``subsample_size`` (its subsample site keeps the
    size asked for, even where the batch is too small for it to subsample)."""
    site = trace.nodes.get(DATA_PLATE)
    return site is not None and site_is_subsample(site) and getattr(site["fn"], "subsample_size", None) is not None


def _refuse_fixed_subsample(model: Callable, guide: Callable, traces: tuple[poutine.Trace, poutine.Trace],
                            index, batch) -> None:
    """A constant ``subsample_size`` equal to the rows checked passes :func:`_check_plate` and then
    subsamples every larger minibatch; one row fewer tells it from ``subsample_size=x.shape[0]``:
    a constant asks for more rows than the plate has."""
    rows = num_rows(batch)
    if rows < 2 or not any(_asks_subsample(trace) for trace in traces):
        return
    fewer, fewer_index = rows_of(batch, slice(0, rows - 1)), None if index is None else index[:rows - 1]
    guide_trace = _trace("guide", guide, fewer_index, fewer)
    model_trace = _trace("model", poutine.replay(model, trace=guide_trace), fewer_index, fewer)
    for where, trace in (("model", model_trace), ("guide", guide_trace)):
        site = trace.nodes.get(DATA_PLATE)
        if _asks_subsample(trace) and site["fn"].subsample_size != rows - 1:
            raise UsageError(f"the {where}'s plate {DATA_PLATE!r} has subsample_size={site['fn'].subsample_size} "
                             f"whatever the batch: {SUBSAMPLED}")


def _failed(where: str, error: Exception, batch) -> UsageError:
    detail = " ".join(str(error).split())[:200] or type(error).__name__
    return UsageError(f"the {where} failed on a batch of {batch[0].shape[0]} rows of the data "
                      f"({type(error).__name__}: {detail}); check that it takes a batch shaped like "
                      f"{tuple(batch[0].shape)} (rows first) and the data suits its likelihood")


def _check_vectorized(model: Callable, guide: Callable, index, batch) -> None:
    """Estimators draw many z per datapoint at once, in a plate left of the data plate: both
    programs must give each (draw, datapoint) pair its own log density."""
    rows = num_rows(batch)
    particles = pyro.plate(PARTICLE_PLATE, 2, dim=PARTICLE_DIM)
    where = "guide"
    try:
        with poutine.block():
            guide_trace = poutine.trace(particles(guide)).get_trace(index, 1.0, *batch)
            where = "model"
            model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)).get_trace(index, 1.0, *batch)
        for where, trace in (("guide", guide_trace), ("model", model_trace)):
            for name, site in _sites(trace).items():
                shape = tuple(site["fn"].log_prob(site["value"]).shape)
                if shape != (2, rows):
                    raise ValueError(f"site {name!r} gives log densities of shape {shape}, not (2, {rows})")
    except (ValueError, RuntimeError, IndexError) as error:
        detail = " ".join(str(error).split())[:160]
        raise UsageError(f"the {where} cannot draw several z per datapoint at once ({detail}), which every estimator "
                         "does (particles in a plate at dim -2): write its shapes from the right, e.g. "
                         "z.new_zeros(*z.shape[:-1], d) or .expand(*batch_shape, d) rather than x.shape[0]") from None


def _sites(trace: poutine.Trace) -> dict[str, dict]:
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}


def _info(site: dict) -> SiteInfo:
    fn = site["fn"]
    base = fn
    while isinstance(base, torch.distributions.Independent):
        base = base.base_dist
    return SiteInfo(tuple(fn.event_shape), repr(fn.support), type(base).__name__, bool(fn.support.is_discrete))


def check_programs(model: Callable, guide: Callable, batch: Batch, index: torch.Tensor | None = None,
                   names: tuple[str, str] = ("model", "guide"), continuous: bool = False) -> ProgramInfo:
    """Run the bound ``model`` and ``guide`` once on the first rows of ``batch`` and refuse, with a
    :class:`UsageError` naming the site, the program and the fix, what pyrovae cannot serve:
    sites outside the data plate (or in a plate of another name), a subsampled data plate, a data
    plate that is not the innermost at dim -1, a model without an observed site, guide sites that
    are not the model's latent sites, or that differ from them in support or event shape, and
    per-point log densities of the wrong shape; with ``continuous``, discrete latents (for AIS).
    Returns what the programs are."""
    small, small_index = first_rows(batch, index)
    rows = num_rows(small)
    guide_trace = _trace("guide", guide, small_index, small)
    model_trace = _trace("model", poutine.replay(model, trace=guide_trace), small_index, small)
    model_sites, guide_sites = _sites(model_trace), _sites(guide_trace)
    for where, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            _check_plate(where, name, site, rows)
    _refuse_fixed_subsample(model, guide, (model_trace, guide_trace), small_index, small)
    observed = {name: site for name, site in model_sites.items() if site["is_observed"]}
    if not observed:
        raise UsageError("the model has no observed site: score the data with pyro.sample('x', ..., obs=x) inside "
                         f"pyro.plate({DATA_PLATE!r}, x.shape[0])")
    latent = {name: site for name, site in model_sites.items() if not site["is_observed"]}
    for name, site in guide_sites.items():
        if site["is_observed"]:
            raise UsageError(f"{_site_name('guide', name)} is observed; a guide samples the model's latent sites only")
        if name not in latent:
            raise UsageError(f"{_site_name('guide', name)} is not a latent site of the model (its latent sites: "
                             f"{sorted(latent) or 'none'}); name the guide's sites as the model's")
    for name, site in latent.items():
        if name not in guide_sites:
            raise UsageError(f"{_site_name('model', name)} is latent but the guide does not sample it: add "
                             f"pyro.sample({name!r}, ...) to the guide")
        q, p = guide_sites[name]["fn"], site["fn"]
        if _support_key(q.support) != _support_key(p.support):
            raise UsageError(f"{_site_name('guide', name)} has support {q.support} but the model's has "
                             f"{p.support}: q must put its mass where p(z) does; sample {name!r} in the guide from a "
                             "distribution with the model's support")
        if tuple(q.event_shape) != tuple(p.event_shape):
            raise UsageError(f"{_site_name('guide', name)} has event shape {tuple(q.event_shape)} but the model's has "
                             f"{tuple(p.event_shape)}; make them agree (.to_event(n) on both)")
    info = ProgramInfo(names[0], names[1], {name: _info(site) for name, site in latent.items()},
                       {name: _info(site) for name, site in observed.items()})
    if continuous:
        refuse_discrete(info)
    for where, sites in (("model", model_sites), ("guide", guide_sites)):
        for name, site in sites.items():
            try:
                shape = tuple(site["fn"].log_prob(site["value"]).shape)
            except ValueError as error:
                raise _failed(where, error, small) from None
            if shape != (rows,):
                raise UsageError(f"{_site_name(where, name)} has per-point log densities of shape {shape} for a "
                                 f"batch of {rows} rows, not ({rows},): give each datapoint one event (batch shape "
                                 "[rows], the rest .to_event(n))")
    _check_vectorized(model, guide, small_index, small)
    return info


def refuse_discrete(info: ProgramInfo) -> None:
    """Annealing moves latents by Hamiltonian dynamics: every latent site must be continuous."""
    for name, site in info.latent.items():
        if site.discrete:
            raise UsageError(f"annealed importance sampling needs continuous latent sites; {name!r} is discrete "
                             f"({site.distribution}); use {option('method', 'is')}")


def first_rows(batch: Batch, index: torch.Tensor | None = None
               ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None]:
    """The first ``CHECK_ROWS`` rows of ``batch`` (and of ``index``): what checks run on."""
    rows = min(CHECK_ROWS, num_rows(batch))
    return rows_of(batch, slice(0, rows)), None if index is None else index[:rows]


def param_sites(fn: Callable, index, batch) -> dict[str, torch.Tensor]:
    """{name: constrained value} of the ``pyro.param`` sites a bound program touches on ``batch``."""
    with poutine.block():
        trace = poutine.trace(fn).get_trace(index, 1.0, *batch)
    return {name: site["value"] for name, site in trace.nodes.items() if site["type"] == "param"}


def observed_is_binary(vae: "VAE", batch: Batch, index: torch.Tensor | None = None) -> bool:
    """Whether every observed site of ``vae``'s model has a binary (Bernoulli-like) support: read
    from one run of its bound model on a few rows, with Pyro's checks off (the data may not be
    binary yet)."""
    model = vae.bound()[0]
    small, small_index = first_rows(batch, index)
    try:
        with poutine.block(), pyro.validation_enabled(False), torch.no_grad():
            trace = poutine.trace(model).get_trace(small_index, 1.0, *small)
    except Exception:   # check_programs reports a model that fails, with advice
        return False
    supports = []
    for site in _sites(trace).values():
        if site["is_observed"]:
            support = site["fn"].support
            while isinstance(support, torch.distributions.constraints.independent):
                support = support.base_constraint
            supports.append(support)
    return bool(supports) and all(s is torch.distributions.constraints.boolean for s in supports)
