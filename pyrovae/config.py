"""Every option of a run, checked in one place, and the VAE it builds."""
from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path

from .core.contract import can
from .core.errors import UsageError, cli_audience, option
from .core.vae import VAE
from .data import BINARIZE, BUILTIN
from .guides import GUIDES
from .models import LIKELIHOODS, MODELS, parse_sigma
from .objectives import OBJECTIVES
from .runs import CONFIG, read_config
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
}
CUSTOM = "custom"       # model / guide / likelihood of a run trained on the caller's own programs
# what may differ from a run's own options when it is resumed: how long, where, and where the data lives
RESUMABLE = ("epochs", "minutes", "device", "data_dir", "tensorboard", "curves_every")
NOISE = ("global", "per-row")   # where training draws its reparameterization noise
MAX_SIZE = 100_000      # widths, latent dims and particles beyond this are typos, not models that fit in memory


def parse_hidden(text: str) -> tuple[int, ...]:
    """``--hidden``: a comma list of layer widths, e.g. ``400`` or ``500,500``; empty means linear."""
    text = text.strip()
    if text in ("", "none", "linear"):
        return ()
    try:
        widths = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UsageError(f"--hidden {text!r} is not a comma list of integers; write e.g. --hidden 400 or "
                         "--hidden 500,500 (or --hidden '' for a linear decoder)") from None
    if any(width <= 0 for width in widths):
        raise UsageError(f"--hidden {text!r} has a width <= 0; every layer needs at least one unit")
    return widths


@dataclass
class FitConfig:
    dataset: str = "mnist-sample"
    data_dir: str | None = None
    test_fraction: float = 0.1
    likelihood: str = "bernoulli"
    sigma: str = "1.0"
    binarize: str | None = None         # default: dynamic for bernoulli, none for normal
    model: str = "vae"                  # a name in pyrovae.models.MODELS
    latent_dim: int = 50                # z (the top layer of a two-layer model)
    hidden: tuple[int, ...] = (400,)    # MLP widths between x and the first latent layer
    z1_dim: int = 100                   # --model two-layer: the bottom latent layer z1
    z1_hidden: tuple[int, ...] = (100, 100)   # --model two-layer: MLP widths between z1 and z2
    guide: str = "amortized"            # a name in pyrovae.guides.GUIDES
    flows: int = 2                      # --guide flow: IAF steps per latent layer
    flow_hidden: int = 0                # --guide flow: MADE hidden units (0: twice the layer's size)
    refine_steps: int = 5               # --guide semi-amortized: gradient steps on each q per call
    refine_lr: float = 0.2              # --guide semi-amortized: their step size (per-row gradients clipped to norm 5)
    elbo: str = "trace"
    particles: int = 1
    jit: bool | None = None             # None: Pyro's JIT for trace and meanfield, eager for iwae
    noise: str = "global"               # per-row: draws seeded per (epoch, step, row of the batch)
    beta: float = 1.0
    kl_warmup: int = 0
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0               # lr of epoch e is lr * lr_decay ** e
    # --guide meanfield: each row of the tables is stepped only when its batch comes up, so it gets
    # its own learning rate and extra steps on its batch first (classical SVI, Hoffman et al. 2013).
    # 0.2 and 4 took mnist-sample's train ELBO from -205 (0.05, 0) to -135 in 15 epochs.
    local_lr: float = 0.2
    local_steps: int = 4
    local_tol: float = 0.0              # stop a batch's local steps once one gains less (nats/point); 0: all
    local_lr_decay: float = 0.0         # a row's lr is local_lr (1 + t)^-decay after its t-th step
    minutes: float = 0.0                # stop after the epoch that passes this budget (0: no budget)
    seed: int = 0
    device: str = "auto"
    eval_train_points: int = 2_000      # train ELBO each epoch on this many training points
    tensorboard: bool = False           # event files in RUN_DIR/tensorboard (pip install 'pyrovae[tensorboard]')
    curves_every: float = 30.0          # redraw curves.png after an epoch once this many seconds have passed
    program: str | None = None          # FILE.py:FACTORY or module:FACTORY: your own model and guide

    def __post_init__(self) -> None:
        self.hidden, self.z1_hidden = tuple(self.hidden), tuple(self.z1_hidden)
        if self.program is not None:   # the program's own model decides: resolved by fit from its observed site
            self.model = self.guide = self.likelihood = CUSTOM
        elif self.binarize is None:
            self.binarize = "dynamic" if self.likelihood == "bernoulli" else "none"
        if self.jit is None:
            # the compiled loss is the fast path (benchmarks/bench_speed.py); Pyro has none for IWAE,
            # and a guide that differentiates inside itself cannot be traced
            self.jit = self.elbo in OBJECTIVES and OBJECTIVES[self.elbo].jit is not None and \
                can(GUIDES.get(self.guide), "jit_compatible") and self.noise == "global"

    def validate(self, check_files: bool = True) -> "FitConfig":
        """Raise :class:`UsageError` naming the first bad option and its fix (``check_files``:
        also that a --program file exists; a saved run's is looked for when it is loaded)."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise UsageError(message)

        def choices(registry) -> str:
            return ", ".join(registry)

        need(self.likelihood in LIKELIHOODS or self.likelihood == CUSTOM,
             f"unknown {option('likelihood')} {self.likelihood!r}; use {choices(LIKELIHOODS)}")
        need(self.model in MODELS or self.model == CUSTOM, f"unknown {option('model')} {self.model!r}; use {choices(MODELS)}")
        need(self.guide in GUIDES or self.guide == CUSTOM, f"unknown {option('guide')} {self.guide!r}; use {choices(GUIDES)}")
        need(self.elbo in OBJECTIVES, f"unknown {option('elbo')} {self.elbo!r}; use {choices(OBJECTIVES)}")
        if self.program is not None:
            check_spec(self.program) if check_files else split_spec(self.program)
        need(self.binarize in BINARIZE or (self.binarize is None and self.program is not None),
             f"unknown {option('binarize')} {self.binarize!r}; use dynamic, static or none")
        need(self.likelihood in ("bernoulli", CUSTOM) or self.binarize == "none",
             f"{option('binarize', self.binarize)} only makes sense with {option('likelihood', 'bernoulli')}; drop it or use {option('binarize', 'none')}")
        need(self.epochs >= 1, f"{option('epochs')} must be at least 1, got {self.epochs}")
        need(self.batch_size >= 1, f"{option('batch-size')} must be at least 1, got {self.batch_size}")
        need(self.latent_dim >= 1, f"{option('latent-dim')} must be at least 1, got {self.latent_dim}")
        need(self.particles >= 1, f"{option('particles')} must be at least 1, got {self.particles}")
        need(self.latent_dim <= MAX_SIZE and self.particles <= MAX_SIZE,
             f"{option('latent-dim', self.latent_dim)} / {option('particles', self.particles)} is too large (at most {MAX_SIZE})")
        need(0 <= self.seed < 2**32, f"{option('seed')} must lie in [0, 2**32 - 1], got {self.seed}")
        need(math.isfinite(self.lr) and self.lr > 0, f"{option('lr')} must be a positive number, got {self.lr}")
        need(0 < self.lr_decay <= 1, f"{option('lr-decay')} must lie in (0, 1], got {self.lr_decay}")
        need(0 <= self.local_steps <= 1000, f"{option('local-steps')} must lie in [0, 1000], got {self.local_steps}")
        need(math.isfinite(self.local_lr) and self.local_lr > 0, f"{option('local-lr')} must be a positive number, got {self.local_lr}")
        need(math.isfinite(self.local_tol) and self.local_tol >= 0,
             f"{option('local-tol')} must be >= 0 nats per point (0: take every local step), got {self.local_tol}")
        need(math.isfinite(self.local_lr_decay) and 0 <= self.local_lr_decay <= 1,
             f"{option('local-lr-decay')} must lie in [0, 1] (0: constant), got {self.local_lr_decay}")
        need(math.isfinite(self.minutes) and self.minutes >= 0, f"{option('minutes')} must be >= 0 (0: no budget), got {self.minutes}")
        need(math.isfinite(self.beta) and self.beta > 0,
             f"{option('beta')} must be a number > 0 (Pyro cannot scale a site by 0), got {self.beta}")
        need(self.kl_warmup >= 0, f"{option('kl-warmup')} must be >= 0 epochs, got {self.kl_warmup}")
        need(0 < self.test_fraction < 1, f"{option('test-fraction')} must lie in (0, 1), got {self.test_fraction}")
        need(math.isfinite(self.curves_every) and self.curves_every >= 0,
             f"{option('curves-every')} must be >= 0 seconds (0: every epoch), got {self.curves_every}")
        need(self.eval_train_points >= 1, f"eval_train_points must be at least 1, got {self.eval_train_points}")
        need(not self.jit or OBJECTIVES[self.elbo].jit is not None,
             f"{option('jit', True)} is not available for {option('elbo', self.elbo)} (Pyro has no JIT version of it); drop {option('jit', True)}")
        need(all(isinstance(width, int) and width > 0 for width in self.hidden),
             f"{option('hidden')} widths must be positive integers, got {self.hidden}")
        need(all(width <= MAX_SIZE for width in self.hidden),
             f"{option('hidden')} widths must be at most {MAX_SIZE}, got {self.hidden}")
        need(1 <= self.z1_dim <= MAX_SIZE, f"{option('z1-dim')} must lie in [1, {MAX_SIZE}], got {self.z1_dim}")
        need(all(isinstance(width, int) and 0 < width <= MAX_SIZE for width in self.z1_hidden),
             f"{option('z1-hidden')} widths must be positive integers up to {MAX_SIZE}, got {self.z1_hidden}")
        need(self.noise in NOISE, f"unknown {option('noise')} {self.noise!r}; use {', '.join(NOISE)}")
        need(not (self.jit and self.noise == "per-row"),
             f"{option('jit', True)} cannot trace {option('noise', 'per-row')} (the noise is drawn outside the "
             f"traced loss); drop {option('jit', True)}")
        need(0 <= self.refine_steps <= 1000, f"{option('refine-steps')} must lie in [0, 1000], got {self.refine_steps}")
        need(math.isfinite(self.refine_lr) and self.refine_lr > 0,
             f"{option('refine-lr')} must be a positive number, got {self.refine_lr}")
        need(not (self.jit and not can(GUIDES.get(self.guide), "jit_compatible")),
             f"{option('jit', True)} cannot trace {option('guide', self.guide)} (it differentiates inside the guide); "
             f"drop {option('jit', True)}")
        need(1 <= self.flows <= 100, f"{option('flows')} must lie in [1, 100], got {self.flows}")
        need(self.flow_hidden == 0 or 2 <= self.flow_hidden <= MAX_SIZE,
             f"{option('flow-hidden')} must be 0 (twice the latent size) or in [2, {MAX_SIZE}], got {self.flow_hidden}")
        if self.likelihood == "normal" and self.model != CUSTOM:
            try:
                parse_sigma(self.sigma)
            except ValueError:
                raise UsageError(f"{option('sigma', self.sigma)} is not a positive number, 'learned' or 'learned-pixel'") from None
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def with_absolute_paths(self) -> "FitConfig":
        """The same config with a data file and ``data_dir`` as absolute paths, so the run can be
        loaded from any working directory."""
        dataset = self.dataset if self.dataset in BUILTIN else str(Path(self.dataset).expanduser().resolve())
        data_dir = None if self.data_dir is None else str(Path(self.data_dir).expanduser().resolve())
        program = None if self.program is None else absolute_spec(self.program)
        return dataclasses.replace(self, dataset=dataset, data_dir=data_dir, program=program)

    def typed_paths(self) -> dict[str, str | None]:
        typed = {"dataset": self.dataset, "data_dir": self.data_dir}
        return typed if self.program is None else {**typed, "program": self.program}

    @classmethod
    def from_run(cls, run_dir: str | Path) -> "FitConfig":
        """The config a run in ``run_dir`` was trained with, checked as a new one is (its types
        too: JSON has none of the dataclass's)."""
        path = Path(run_dir) / CONFIG
        values = read_config(Path(run_dir))["config"]
        try:
            check_types(values)
            with cli_audience(False):   # the run's options by their names in config.json, not as flags
                return cls.from_dict(values).validate(check_files=False)
        except (KeyError, TypeError, UsageError) as error:
            raise UsageError(f"{str(path)!r} holds a config pyrovae cannot use ({error}); restore it from a copy, "
                             "or retrain") from None

    def resumed_from(self, saved: "FitConfig") -> tuple["FitConfig", list[str]]:
        """The run's ``saved`` config with what this one sets: options left at their defaults take
        the run's values, ``RESUMABLE`` ones take this config's. Also the options this config sets
        to another value than the run's, which may not change on resume (a data file may move if
        the old one is gone)."""
        defaults = FitConfig()
        merged, conflicts = {}, []
        for field in dataclasses.fields(self):
            mine, theirs = getattr(self, field.name), getattr(saved, field.name)
            if field.name in RESUMABLE:
                merged[field.name] = mine
                continue
            merged[field.name] = theirs
            if mine == theirs or mine == getattr(defaults, field.name):
                continue
            if field.name == "dataset" and theirs not in BUILTIN and not Path(theirs).exists() \
                    and mine not in BUILTIN and Path(mine).exists():
                merged[field.name] = mine   # the data file moved: this is where it is now
                continue
            if field.name == "program" and mine is not None and theirs is not None \
                    and not Path(theirs.rpartition(":")[0]).exists():
                merged[field.name] = mine   # the program's file moved
                continue
            conflicts.append(field.name)
        return dataclasses.replace(saved, **merged), conflicts

    @classmethod
    def from_dict(cls, values: dict) -> "FitConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in names})


def check_types(values: dict) -> None:
    """Raise TypeError naming the first entry of a saved config whose type is not its field's
    (an int where an int is due, a list of ints for widths, ...)."""
    hints = typing.get_type_hints(FitConfig)
    for field in dataclasses.fields(FitConfig):
        if field.name in values and not _has_type(values[field.name], hints[field.name]):
            raise TypeError(f"{field.name} is {values[field.name]!r}, not {_type_name(hints[field.name])}")


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


def build_vae(config: FitConfig, data_dim: int, num_train: int) -> VAE:
    """The model and guide a config names, from the registries; refuses an objective the guide
    cannot serve (TraceMeanField_ELBO is exact only for a mean-field guide)."""
    if config.program is not None:
        return load_program(config.program)
    if CUSTOM in (config.model, config.guide):
        raise UsageError("this run was trained on your own model and guide; pass them again: vae=VAE(model, guide)")
    model = MODELS[config.model].from_config(config, data_dim)
    try:
        guide = GUIDES[config.guide].from_config(config, model, num_train)
    except ValueError as error:   # a family that cannot serve this model says why
        raise UsageError(f"{option('guide', config.guide)} with {option('model', config.model)}: {error}") from None
    if OBJECTIVES[config.elbo].needs_mean_field_guide and not can(guide, "mean_field"):
        raise UsageError(f"--elbo {config.elbo} (closed-form KL) needs a mean-field guide, but --guide {config.guide} "
                         f"of --model {config.model} makes latent sites depend on each other; use --elbo trace or iwae")
    if config.guide == "flow" and config.flow_hidden and any(config.flow_hidden < layer.dim
                                                             for layer in model.latent_layers()):
        raise UsageError(f"--flow-hidden {config.flow_hidden} is smaller than a latent layer "
                         f"({max(layer.dim for layer in model.latent_layers())} units); a MADE needs at least as many")
    return VAE(model, guide)
