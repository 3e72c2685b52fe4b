"""Every option of a run, composed of the parts that own them, and the VAE it builds.

A run's options come from five owners, each an options dataclass (:mod:`pyrovae.core.options`)
that states its defaults, help and checks once: the data (:class:`~pyrovae.data.DataOptions`),
the model family's (``MODELS[name].Options``), the guide family's (``GUIDES[name].Options``), the
objective (:class:`~pyrovae.objectives.ObjectiveOptions`) and the training
(:class:`~pyrovae.training.options.TrainingOptions`). :class:`FitConfig` holds them and speaks
their options by name (``FitConfig(model="two-layer", z1_dim=100, epochs=5)``,
``config.latent_dim``), as ``config.json`` records them: one flat object of the options that apply
to the run's families. Configs of older runs, which recorded every family's options, load as
they are (what does not apply is dropped: :meth:`FitConfig.from_dict`).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Iterator

from .core.contract import can, declared
from .core.errors import UsageError, cli_audience, option
from .core.options import NoOptions, Options
from .core.vae import VAE
from .data import BUILTIN, DataOptions
from .guides import DEFAULT_GUIDE, GUIDES
from .models import DEFAULT_MODEL, MODELS
from .objectives import OBJECTIVES, ObjectiveOptions
from .runs import CONFIG, read_config
from .training.options import TrainingOptions
from .user_programs import absolute_spec, check_spec, load_program, split_spec

# Named recipes: option values a preset sets unless the command line gives them.
PRESETS: dict[str, dict] = {
    # the MNIST log-likelihood recipe of benchmarks/bench_loglik.py, trained with the ELBO
    "mnist-elbo": dict(dataset="mnist", hidden=(500, 500), latent_dim=50, batch_size=128, lr=1e-3,
                       lr_decay=0.99, kl_warmup=10, elbo="meanfield"),
    # the same networks trained with the IWAE bound, K=5: more particles cost more than they gain
    # within an hour of CPU
    "mnist-iwae": dict(dataset="mnist", hidden=(500, 500), latent_dim=50, batch_size=128, lr=1e-3,
                       lr_decay=0.99, elbo="iwae", particles=5),
    # Burda et al. (2016)'s one-stochastic-layer sizes (784-200-200-50, batch 20) with the IWAE bound, K=50
    "iwae-paper": dict(dataset="mnist", hidden=(200, 200), latent_dim=50, batch_size=20, lr=1e-3,
                       lr_decay=0.99, elbo="iwae", particles=50),
    # Burda et al.'s two stochastic layers (784-200-200-100-100-100-50), trained with the ELBO
    "mnist-two-layer": dict(dataset="mnist", model="two-layer", hidden=(200, 200), z1_dim=100,
                            z1_hidden=(100, 100), latent_dim=50, batch_size=128, lr=1e-3, lr_decay=0.99,
                            kl_warmup=10, elbo="trace"),
    # The papers' recipes (benchmarks/reproduce/SETTINGS.md says where in their code each setting is):
    # Burda, Grosse & Salakhutdinov (2016)'s VAE, one stochastic layer 784-200-200-50, tanh, Glorot
    # init, batch 20, Adam (0.99, 0.999, eps 1e-4), their 8-stage schedule on the budget, the last 400
    # training rows held out; the ELBO with its KL in closed form (they estimated it from the one draw)
    "burda-1layer": dict(dataset="mnist", hidden=(200, 200), latent_dim=50, activation="tanh", init="glorot",
                         batch_size=20, lr=1e-3, lr_schedule="burda", adam_beta1=0.99, adam_eps=1e-4,
                         elbo="meanfield", validation=400, epochs=3280, minutes=60.0),
    # their two stochastic layers: 784-200-200-100 (z1), 100-100-50 (z2); the prior of z1 depends on
    # z2, so the ELBO is Monte Carlo, as theirs
    "burda-2layer": dict(dataset="mnist", model="two-layer", hidden=(200, 200), z1_dim=100, z1_hidden=(100, 100),
                         latent_dim=50, activation="tanh", init="glorot", batch_size=20, lr=1e-3,
                         lr_schedule="burda", adam_beta1=0.99, adam_eps=1e-4, elbo="trace", validation=400,
                         epochs=3280, minutes=60.0, output_bias="data-mean"),
    # Cremer, Li & Duvenaud (2018)'s MNIST VAE (lxuechen/inference-suboptimality): 784-200-200-50 with
    # ELU, batch 100, Adam (eps 1e-4), Burda et al.'s schedule; a factorized Gaussian q (FFG) ...
    "cremer-ffg": dict(dataset="mnist", hidden=(200, 200), latent_dim=50, activation="elu", batch_size=100, lr=1e-3,
                       lr_schedule="burda", adam_eps=1e-4, elbo="meanfield", validation=400, epochs=3280,
                       minutes=60.0),
    # ... or a flow on it: 2 steps with 200 hidden units each (theirs: R-NVP couplings with an
    # auxiliary variable; pyrovae's: inverse autoregressive flows, SETTINGS.md)
    "cremer-flow": dict(dataset="mnist", guide="flow", flows=2, flow_hidden=200, hidden=(200, 200), latent_dim=50,
                        activation="elu", batch_size=100, lr=1e-3, lr_schedule="burda", adam_eps=1e-4, elbo="trace",
                        validation=400, epochs=3280, minutes=60.0),
}
CUSTOM = "custom"       # model / guide / likelihood of a run trained on the caller's own programs
# what may differ from a run's own options when it is resumed: how long, where, and where the data lives
RESUMABLE = ("epochs", "minutes", "patience", "device", "data_dir", "tensorboard", "curves_every")
CHOICES = ("model", "guide", "program")   # what picks the families (not an option of any part)


def model_options(name: str) -> type[Options]:
    return declared(MODELS[name], "model", "Options") if name in MODELS else NoOptions


def guide_options(name: str) -> type[Options]:
    return declared(GUIDES[name], "guide", "Options") if name in GUIDES else NoOptions


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


class FitConfig:
    """The options of a run: ``model`` and ``guide`` (registry names, or ``custom``), ``program``
    (FILE.py:FACTORY of your own), and the parts :attr:`data`, :attr:`model_options`,
    :attr:`guide_options`, :attr:`objective`, :attr:`training`. Construct it with options by name;
    read and set them by name too (each lives in exactly one part)."""

    def __init__(self, model: str = DEFAULT_MODEL, guide: str = DEFAULT_GUIDE, program: str | None = None,
                 **options: Any):
        if program is not None:   # the program's own model decides: resolved by fit from its observed site
            model = guide = CUSTOM
        parts = {"data": DataOptions, "model_options": model_options(model), "guide_options": guide_options(guide),
                 "objective": ObjectiveOptions, "training": TrainingOptions}
        given: dict[str, dict[str, Any]] = {part: {} for part in parts}
        owner = {name: part for part, cls in parts.items() for name in _names(cls)}
        unused = {}
        for name, value in options.items():
            if name in owner:
                given[owner[name]][name] = value
            elif name in ALL_OPTIONS:
                unused[name] = value   # an option of another family: ignored (see refuse_unused)
            else:
                raise TypeError(f"FitConfig got an unknown option {name!r}")
        object.__setattr__(self, "_values", {"model": model, "guide": guide, "program": program})
        object.__setattr__(self, "_unused", unused)
        object.__setattr__(self, "_resolved", set())   # options left unset, whose values follow from others
        for part, cls in parts.items():
            object.__setattr__(self, part, cls(**given[part]))
        self._resolve()

    def _resolve(self) -> None:
        """Defaults that follow from other options: the binarization from the likelihood (a
        program's, by fit from its observed site), the JIT from the objective, guide and noise."""
        if self.data.binarize is None and self.model != CUSTOM:
            self._resolved.add("binarize")
            self.data.binarize = "dynamic" if self.likelihood == "bernoulli" else "none"
        if self.objective.jit is None:
            self._resolved.add("jit")
            # the compiled loss is the fast path (benchmarks/bench_speed.py); Pyro has none for IWAE,
            # and a guide that differentiates inside itself cannot be traced
            self.objective.jit = self.elbo in OBJECTIVES and OBJECTIVES[self.elbo].jit is not None and \
                can(GUIDES.get(self.guide), "jit_compatible") and self.training.noise == "global"

    # -------------------------------------------------------------------- options by name

    @property
    def likelihood(self) -> str:
        """The model family's likelihood option, or ``custom`` for programs of your own."""
        part = self._part_of("likelihood")
        return CUSTOM if part is None else part.likelihood

    @property
    def parts(self) -> tuple[Options, ...]:
        return self.data, self.model_options, self.guide_options, self.objective, self.training

    def _part_of(self, name: str) -> Options | None:
        return next((part for part in self.parts if name in _names(type(part))), None)

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        part = self._part_of(name) if "_values" in self.__dict__ else None
        if part is None:
            raise AttributeError(f"FitConfig has no option {name!r} for --model {values.get('model')} and "
                                 f"--guide {values.get('guide')}")
        return getattr(part, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "program" and self.program is not None and value is not None:
            self._values["program"] = value   # where a program run's file is now: the families stay
            return
        if name in CHOICES:
            raise AttributeError(f"{name} picks the families; make a new config with replace({name}=...)")
        part = self._part_of(name)
        if part is None:
            raise AttributeError(f"FitConfig has no option {name!r} for --model {self.model} and --guide {self.guide}")
        setattr(part, name, value)

    def options(self) -> Iterator[tuple[str, Any]]:
        """(name, value) of every option that applies: the choices first, then each part's."""
        yield from self._values.items()
        for part in self.parts:
            for name in _names(type(part)):
                yield name, getattr(part, name)

    def to_dict(self) -> dict[str, Any]:
        """The options as config.json records them: one flat object."""
        return {name: list(value) if isinstance(value, tuple) else value for name, value in self.options()}

    def replace(self, **changes: Any) -> "FitConfig":
        """A new config with ``changes``; a new ``model`` or ``guide`` takes its own family's options,
        and the defaults that followed from other options follow from the new ones."""
        values = {**self._unused, **{n: v for n, v in self.options() if n not in self._resolved}, **changes}
        return FitConfig(**values)

    def for_programs(self, guide: object) -> "FitConfig":
        """This config for a model and guide of your own (``fit(..., vae=)``): the families
        ``custom`` (a built-in family's options no longer apply), the binarization left for fit to
        read from the model's observed site, the JIT where ``guide`` can be traced."""
        if self.model == CUSTOM:
            return self
        config = self.replace(model=CUSTOM, guide=CUSTOM)
        if "jit" in config._resolved and not can(guide, "jit_compatible"):
            config.jit = False
        return config

    def options_of(self, cls: type[Options]) -> Options:
        """``cls`` (an options dataclass) from this config: the values of its part, or those given
        for another family (a per-datapoint guide of your own steps its rows by LocalStepOptions)."""
        values = {**self._unused, **dict(self.options())}
        return cls(**{name: values[name] for name in _names(cls) if name in values})

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FitConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"FitConfig({', '.join(f'{k}={v!r}' for k, v in self.options())})"

    # -------------------------------------------------------------------- checks

    def validate(self, check_files: bool = True) -> "FitConfig":
        """Raise :class:`UsageError` naming the first bad option and its fix (``check_files``:
        also that a --program file exists; a saved run's is looked for when it is loaded)."""
        if self.model not in MODELS and self.model != CUSTOM:
            raise UsageError(f"unknown {option('model')} {self.model!r}; use {', '.join(MODELS)}")
        if self.guide not in GUIDES and self.guide != CUSTOM:
            raise UsageError(f"unknown {option('guide')} {self.guide!r}; use {', '.join(GUIDES)}")
        if self.program is not None:
            check_spec(self.program) if check_files else split_spec(self.program)
        for part in self.parts:
            part.validate()
        if self.binarize not in ("none", None) and self.likelihood not in ("bernoulli", CUSTOM):
            raise UsageError(f"{option('binarize', self.binarize)} only makes sense with "
                             f"{option('likelihood', 'bernoulli')}; drop it or use {option('binarize', 'none')}")
        if self.patience and not self.validation:
            raise UsageError(f"{option('patience', self.patience)} stops on the validation ELBO, but there is no "
                             f"validation split; pass {option('validation', 400)} (say) too, or drop "
                             f"{option('patience', self.patience)}")
        if self.validation and self.guide != CUSTOM and not can(GUIDES.get(self.guide), "amortized"):
            raise UsageError(f"{option('validation', self.validation)} needs a guide with an encoder (its ELBO is "
                             f"of held-out points), but {option('guide', self.guide)} has no q for them; drop "
                             f"{option('validation', self.validation)} or use an amortized guide")
        if self.jit and self.noise == "per-row":
            raise UsageError(f"{option('jit', True)} cannot trace {option('noise', 'per-row')} (the noise is drawn "
                             f"outside the traced loss); drop {option('jit', True)}")
        if self.jit and not can(GUIDES.get(self.guide), "jit_compatible"):
            raise UsageError(f"{option('jit', True)} cannot trace {option('guide', self.guide)} (it differentiates "
                             f"inside the guide); drop {option('jit', True)}")
        return self

    def refuse_unused(self) -> None:
        """Refuse options of families other than the chosen ones. ``FitConfig`` itself ignores
        them (one config may serve several families); the CLI, where they are a typo or a missing
        --model / --guide, calls this."""
        for name in self._unused:
            owners = ([option("model", m) for m in MODELS if name in _names(model_options(m))] +
                      [option("guide", g) for g in GUIDES if name in _names(guide_options(g))])
            chosen = option("program") if self.program else f"{option('model', self.model)} and {option('guide', self.guide)}"
            raise UsageError(f"{option(name)} is an option of {' or '.join(owners)}, not of {chosen}; drop it "
                             f"or choose that family")

    # -------------------------------------------------------------------- paths and runs

    def with_absolute_paths(self) -> "FitConfig":
        """The same config with a data file, ``data_dir`` and a program's file as absolute paths,
        so the run can be loaded from any working directory."""
        dataset = self.dataset if self.dataset in BUILTIN else str(Path(self.dataset).expanduser().resolve())
        data_dir = None if self.data_dir is None else str(Path(self.data_dir).expanduser().resolve())
        program = None if self.program is None else absolute_spec(self.program)
        return self.replace(dataset=dataset, data_dir=data_dir, program=program)

    def typed_paths(self) -> dict[str, str | None]:
        typed = {"dataset": self.dataset, "data_dir": self.data_dir}
        return typed if self.program is None else {**typed, "program": self.program}

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "FitConfig":
        """The config a run in ``run_dir`` was trained with, checked as a new one is (its types
        too: JSON has none of the dataclasses')."""
        path = Path(run_dir) / CONFIG
        values = read_config(Path(run_dir))["config"]
        try:
            check_types(values)
            with cli_audience(False):   # the run's options by their names in config.json, not as flags
                return cls.from_dict(values).validate(check_files=False)
        except (KeyError, TypeError, UsageError) as error:
            raise UsageError(f"{str(path)!r} holds a config pyrovae cannot use ({error}); restore it from a copy, "
                             "or retrain") from None

    @classmethod
    def from_dict(cls, values: dict) -> "FitConfig":
        """A config from config.json's object. Runs written before the options were composed
        (pyrovae 0.2) recorded every family's options: those of other families are dropped."""
        model = values.get("model", DEFAULT_MODEL)
        guide = values.get("guide", DEFAULT_GUIDE)
        program = values.get("program")
        applies = set(_names(DataOptions)) | set(_names(ObjectiveOptions)) | set(_names(TrainingOptions))
        if program is None:
            applies |= set(_names(model_options(model))) | set(_names(guide_options(guide)))
        return cls(model=model, guide=guide, program=program,
                   **{name: value for name, value in values.items() if name in applies})

    def resumed_from(self, saved: "FitConfig") -> tuple["FitConfig", list[str]]:
        """The run's ``saved`` config with what this one sets: options left at their defaults take
        the run's values, ``RESUMABLE`` ones take this config's. Also the options this config sets
        to another value than the run's, which may not change on resume (a data file may move if
        the old one is gone)."""
        defaults, theirs_all = dict(FitConfig().options()), dict(saved.options())
        merged, conflicts = dict(theirs_all), []
        for name, mine in self.options():
            theirs = theirs_all.get(name)
            if name in RESUMABLE:
                merged[name] = mine
                continue
            if mine == theirs or mine is None or name in self._resolved or name in defaults and mine == defaults[name]:
                continue   # the same, or left unset here (a default, or one that followed from other options)
            if name == "dataset" and theirs not in BUILTIN and not Path(theirs).exists() \
                    and mine not in BUILTIN and Path(mine).exists():
                merged[name] = mine   # the data file moved: this is where it is now
                continue
            if name == "program" and mine is not None and theirs is not None \
                    and not Path(theirs.rpartition(":")[0]).exists():
                merged[name] = mine   # the program's file moved
                continue
            conflicts.append(name)
        return FitConfig(**merged), conflicts


def option_classes() -> list[type[Options]]:
    """Every options dataclass a run's config may hold: the data's, the objective's, the
    training's, and each registered family's."""
    classes = [DataOptions, ObjectiveOptions, TrainingOptions,
               *(model_options(name) for name in MODELS), *(guide_options(name) for name in GUIDES)]
    return list(dict.fromkeys(classes))


ALL_OPTIONS = {name for cls in option_classes() for name in _names(cls)}


def check_types(values: dict) -> None:
    """Raise TypeError naming the first entry of a saved config whose type is not its field's
    (an int where an int is due, a list of ints for widths, ...)."""
    checked = {"model": str, "guide": str, "program": str | None}
    for cls in option_classes():
        checked.update(typing.get_type_hints(cls))
    for name, hint in checked.items():
        if name in values and not _has_type(values[name], hint):
            raise TypeError(f"{name} is {values[name]!r}, not {_type_name(hint)}")


def _has_type(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:   # tuple[int, ...]: a JSON list
        return isinstance(value, (list, tuple)) and all(_has_type(item, args[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint) -> str:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        return f"a list of {args[0].__name__}s"
    if args:
        return " or ".join(_type_name(arg) for arg in args)
    return "null" if hint is type(None) else f"a{'n' if hint is int else ''} {hint.__name__}"


def build_vae(config: FitConfig, data_dim: int, num_train: int, image_shape: tuple[int, ...] | None = None) -> VAE:
    """The model and guide a config names, from the registries, for rows of ``data_dim`` numbers
    (``image_shape`` (C, H, W) when they are images: :attr:`pyrovae.data.Dataset.image_shape`) and
    ``num_train`` training rows; refuses an objective the guide cannot serve (TraceMeanField_ELBO
    is exact only for a mean-field guide)."""
    if config.program is not None:
        return load_program(config.program)
    if CUSTOM in (config.model, config.guide):
        raise UsageError("this run was trained on your own model and guide; pass them again: vae=VAE(model, guide)")
    shape = None if image_shape is None else tuple(int(side) for side in image_shape)
    model = MODELS[config.model].from_options(config.model_options, data_dim, shape)
    try:
        guide = GUIDES[config.guide].from_options(config.guide_options, model, num_train)
        attach = declared(model, "model", "attach_guide")
        if attach is not None:   # a model whose prior uses the guide's q
            attach(guide)
    except ValueError as error:   # a family that cannot serve this model (or a model this guide) says why
        raise UsageError(f"{option('guide', config.guide)} with {option('model', config.model)}: {error}") from None
    if OBJECTIVES[config.elbo].needs_mean_field_guide and not can(guide, "mean_field"):
        raise UsageError(f"--elbo {config.elbo} (closed-form KL) needs a mean-field guide, but --guide {config.guide} "
                         f"of --model {config.model} makes latent sites depend on each other; use --elbo trace or iwae")
    return VAE(model, guide)
