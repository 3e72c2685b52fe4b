"""Per-point variational fits with the model frozen: q_i for each datapoint x_i, optimized alone.

For each row, maximize ELBO(x_i; q_i) over the members q_i of a per-point family, with the
model's parameters frozen: the best q_i of the family, whatever an encoder would have said. The
ELBO of a batch is a sum of independent per-point ELBOs, so the gradient wrt q_i's parameters
involves x_i only, and one Adam (per-coordinate, hence per-point) optimizes all rows at once.
The loss is Pyro's TraceMeanField_ELBO (closed-form KL where the family has one, Monte Carlo
otherwise) of the model against the per-point guide.

The family is the guide's own when it has one (``guide.local_family(batch, init)``: per-point
flows for a flow guide), else diagonal Gaussian tables over every latent site
(:class:`~pyrovae.guides.MeanFieldGuide`). Started from the guide's q(z | x_i) and run for a few
steps, this is the semi-amortized refinement of Kim et al. (2018); run to convergence it gives
the L[q*] of Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders".

Stopping rule: every ``window`` steps compare the mean ELBO of the window with the previous
window's; once it improves by less than ``tol`` nats per point, divide the learning rate by 10
(at most ``lr_decays`` times, which removes most of Adam's noise from the final q), then stop.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

import pyro
import torch
from pyro.infer.util import is_validation_enabled
from torch import nn
from torch.distributions import biject_to

from ..core import interrupts
from ..core.contract import declared
from ..core.errors import UsageError, option
from ..core.noise import forked_rng
from ..core.options import non_negative, positive
from ..core.options import option as setting
from ..core.progress import Progress, Report
from ..core.programs import Data, as_batch, bind, is_real, num_rows, rows_of, unconstrained_shape
from ..core.traces import ElboTerms, elbo_terms, latent_shapes, particle_traces, sample_sites
from ..core.vae import VAE, frozen
from ..evaluation.settings import Settings, configured, optional, whole
from ..guides.meanfield import MeanFieldGuide
from ..guides.rows import concat_rows
from ..objectives import make_objective

Init = Union[str, tuple[torch.Tensor, torch.Tensor]]   # "prior", "q" ("encoder"), or a (loc, scale) table
EVAL_ELEMENTS = 20_000   # rows x samples through the decoder at once when estimating the ELBO
MOMENT_DRAWS = 64        # draws per point to match a non-Gaussian q's moments


@dataclass(frozen=True, kw_only=True)
class LocalFitSettings(Settings):
    """The per-point fit's: at most ``max_steps`` Adam steps at ``lr`` on ``batch_size`` rows at a
    time, the stopping rule (module docstring: ``window``, ``tol``, ``lr_decays``), and the final
    ELBO's ``eval_samples`` reconstruction draws per point."""

    max_steps: int = setting(3000, "Most Adam steps of the fit per batch of rows.", check=whole(0))
    lr: float = setting(0.05, "Adam learning rate of the fit.", check=positive)
    particles: int = setting(1, "Draws per point of each step's ELBO estimate.", check=whole(1))
    tol: float | None = setting(0.01, "Stop once a window's mean ELBO improves by less than this many nats per "
                                      "point (after the learning rate's decays).",
                                check=optional(non_negative("nats"), "None: take every step"))
    window: int = setting(100, "Steps per window of the stopping rule.", check=whole(1))
    lr_decays: int = setting(2, "Divisions of the learning rate by 10 at a plateau before stopping.", check=whole(0))
    batch_size: int = setting(1000, "Rows optimized together.", check=whole(1))
    eval_samples: int = setting(100, "Reconstruction draws per point of the fitted ELBO.", check=whole(1))
    seed: int = setting(0, "Seeds the fit's draws.", check=whole())


@dataclass
class LocalFit:
    """The fitted per-point guide over the rows of the data (``guide(x, index)``: a proposal for
    :func:`~pyrovae.evaluation.importance.estimate_log_likelihood`) and its ELBO per point."""

    guide: nn.Module
    elbo: torch.Tensor       # [N]: closed-form KL where exact, reconstruction averaged over eval_samples draws
    steps: list[int] = field(default_factory=list)   # Adam steps taken, per batch of rows
    seconds: float = 0.0
    reconstruction: torch.Tensor | None = None   # [N]: the ELBO's two terms, elbo = reconstruction - kl
    kl: torch.Tensor | None = None

    @property
    def loc(self) -> torch.Tensor:
        """[N, D]: the fitted means of a one-site Gaussian table."""
        return next(iter(self.guide.moments().values()))[0]

    @property
    def scale(self) -> torch.Tensor:
        return next(iter(self.guide.moments().values()))[1]


class Plateau:
    """The stopping rule: window means of the ELBO; a plateau first decays lr, then stops."""

    def __init__(self, window: int, tol: float | None, lr_decays: int):
        self.window, self.tol, self.decays_left = window, tol, lr_decays
        self.values: list[float] = []
        self.previous = -math.inf

    def update(self, elbo: float) -> str:
        """``"go"``, ``"decay"`` (divide lr by 10) or ``"stop"``, after one step's mean ELBO."""
        self.values.append(elbo)
        if self.tol is None or len(self.values) < self.window:
            return "go"
        mean = sum(self.values) / len(self.values)
        self.values.clear()
        improved = mean - self.previous > self.tol
        self.previous = mean
        if improved:
            return "go"
        if self.decays_left > 0:
            self.decays_left -= 1
            self.previous = -math.inf   # the first window at the new lr is compared afresh
            return "decay"
        return "stop"


@torch.no_grad()
def guide_moments(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None, with_supports: bool = False):
    """(mean, std) [rows, *event] per latent site of the VAE's guide on ``batch``: exact for a
    Gaussian site whose parameters depend on x alone, matched from ``MOMENT_DRAWS`` draws otherwise
    (in the unconstrained space of a site with a constrained support); ``with_supports``: also
    {site: support}."""
    model, guide = vae.bound()
    _, trace = particle_traces(model, guide, MOMENT_DRAWS, index, 1.0, *batch)
    moments, supports = {}, {}
    for name, site in sample_sites(trace):
        fn, value = site["fn"], site["value"]
        supports[name] = fn.support
        if not is_real(fn.support):
            value = biject_to(fn.support).inv(value)
            moments[name] = (value.mean(0), value.std(0).clamp(min=1e-4))
            continue
        try:
            mean, std = fn.mean, fn.stddev
            exact = bool((mean == mean[:1]).all() and (std == std[:1]).all())
        except NotImplementedError:
            exact = False
        moments[name] = (mean[0], std[0]) if exact else (value.mean(0), value.std(0).clamp(min=1e-4))
    return (moments, supports) if with_supports else moments


def initial_guide(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None, init: Init) -> nn.Module:
    """The per-point family of the VAE's guide for the rows of ``batch``, at its starting point:
    the guide's own (``local_family``), else Gaussian tables over every latent site, pushed
    through ``biject_to(support)`` for a constrained one."""
    if isinstance(init, tuple):
        shapes = latent_shapes(vae.bound()[0], index, 1.0, *batch)
        return MeanFieldGuide.from_moments({next(iter(shapes)): init}, {n: s for n, (_, s) in shapes.items()})
    if init not in ("prior", "q", "encoder"):
        raise UsageError(f"unknown {option('init')} {init!r}; use 'prior', 'q' (the guide's q(z | x)) or a "
                         "(loc, scale) pair")
    init = "q" if init == "encoder" else init
    if init == "q" and not vae.can("amortized") and index is None:
        raise UsageError(f"{option('init', 'q')} needs the guide's q for these points: this guide has per-datapoint "
                         f"parameters, so pass the rows' {option('index')} (or {option('init', 'prior')})")
    family = declared(vae.guide, "guide", "local_family")
    if family is not None:
        return family(batch, init)
    if init == "q":
        moments, supports = guide_moments(vae, batch, index, with_supports=True)
        return MeanFieldGuide.from_moments(moments, supports)
    shapes = latent_shapes(vae.bound()[0], index, 1.0, *batch)
    for name, (shape, support) in shapes.items():
        if support.is_discrete:
            raise UsageError(f"latent site {name!r} is discrete ({support}); per-point Gaussian fits need continuous "
                             "latents")
    like, rows = batch[0], num_rows(batch)
    # N(0, I) in each site's unconstrained space, shaped as biject_to maps from (K − 1 numbers for a K-simplex)
    unconstrained = {name: unconstrained_shape(shape, support) for name, (shape, support) in shapes.items()}
    return MeanFieldGuide.from_moments({name: (like.new_zeros(rows, *shape), like.new_ones(rows, *shape))
                                        for name, shape in unconstrained.items()}, {n: s for n, (_, s) in shapes.items()})


def fit_local(vae: VAE, data: Data, init: Init = "prior", *, index: torch.Tensor | None = None,
              settings: LocalFitSettings | None = None, progress: Report = False, **changes) -> LocalFit:
    """Maximize each row's ELBO over its own member of the per-point family, the model frozen.

    ``init``: ``"prior"`` (N(0, I), identity flows), ``"q"`` (the VAE's guide; ``index`` gives the
    rows of a per-datapoint guide), or a (loc, scale) table for a one-site model. ``settings``
    (:class:`LocalFitSettings`), changed by keywords (``max_steps=500``, ``tol=None``: exactly
    ``max_steps`` steps, a fixed refinement budget). ``progress``: True for a bar on stderr, or a
    callable(steps_done, most_steps), most_steps = ``max_steps`` per batch of rows (a batch that
    stops early counts as all of its steps: one batch of 1000 rows can take minutes, so the bar
    moves by steps, not rows).
    """
    settings = configured(LocalFitSettings, settings, changes)
    data = vae.as_batch(data)
    n = num_rows(data)
    objective = make_objective("meanfield", settings.particles)
    started = time.perf_counter()
    guides, steps = [], []
    most = settings.max_steps
    with frozen(vae), vae.param_store(), forked_rng(vae.device, settings.seed), \
            Progress(progress, math.ceil(n / settings.batch_size) * most, "fit q per point", unit="step") as report:
        for batch_number, start in enumerate(range(0, n, settings.batch_size)):
            rows = range(start, min(start + settings.batch_size, n))
            batch = rows_of(data, rows)
            rows_index = None if index is None else index[rows.start:rows.stop].to(vae.device)
            if isinstance(init, tuple):
                start_at = (init[0][rows.start:rows.stop].to(batch[0]), init[1][rows.start:rows.stop].to(batch[0]))
            else:
                start_at = init
            local = initial_guide(vae, batch, rows_index, start_at).to(batch[0])
            done = batch_number * most
            steps.append(_fit_batch(vae, local, batch, objective, settings, lambda step: report(done + step)))
            guides.append(local.requires_grad_(False))
            report(done + most)
        guide = concat_rows(guides)
        terms = terms_per_point(vae, data, guide, settings.eval_samples)
    return LocalFit(guide, terms.elbo, steps, time.perf_counter() - started, terms.reconstruction, terms.kl)


def _fit_batch(vae: VAE, local: nn.Module, batch: tuple[torch.Tensor, ...], objective,
               settings: LocalFitSettings, on_step: Callable[[int], None]) -> int:
    """Adam on the rows of ``batch`` until the stopping rule says so, telling ``on_step`` each
    step taken; the steps taken."""
    lr, plateau = settings.lr, Plateau(settings.window, settings.tol, settings.lr_decays)
    groups = declared(local, "local_family", "param_groups")   # a family may step some parameters more gently
    optimizer = torch.optim.Adam(groups(lr) if groups else local.parameters(), lr=lr)
    warmup = declared(local, "local_family", "lr_warmup")
    for group in optimizer.param_groups:
        group["target_lr"] = group["lr"]
    model, guide = vae.bound()[0], bind(local)
    index = torch.arange(num_rows(batch), device=batch[0].device)
    validate = is_validation_enabled()
    step = 0
    for step in range(1, settings.max_steps + 1):
        interrupts.check()   # under an evaluation's StopFlag, a signal drops this batch at once
        if step <= warmup:
            for group in optimizer.param_groups:
                group["lr"] = group["target_lr"] * step / warmup
        # sum over rows of -ELBO_i: row i's gradient depends on x_i alone. Pyro's validation (as
        # the caller set it) checks supports and shapes on the first step; later it only costs time
        with pyro.validation_enabled(validate and step == 1):
            loss = objective.differentiable_loss(model, guide, index, 1.0, *batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        decision = plateau.update(-loss.item() / num_rows(batch))
        on_step(step)
        if decision == "stop":
            break
        if decision == "decay":
            for group in optimizer.param_groups:
                group["lr"] /= 10
                group["target_lr"] /= 10
    return step


def elbo_per_point(vae: VAE, data: Data, guide: nn.Module | Callable, num_samples: int = 100,
                   index: torch.Tensor | None = None) -> torch.Tensor:
    """ELBO(x_i; q_i) per row of ``data``: the reconstruction averaged over ``num_samples``
    draws, the KL in closed form where exact. ``guide`` is a per-point guide over the rows of
    ``data`` (or over the rows ``index`` of its tables), or an amortized guide; a (loc, scale)
    pair stands for a one-site Gaussian table."""
    return terms_per_point(vae, data, guide, num_samples, index).elbo


@torch.no_grad()
def terms_per_point(vae: VAE, data: Data, guide: nn.Module | Callable, num_samples: int = 100,
                    index: torch.Tensor | None = None) -> ElboTerms:
    """The reconstruction and KL per row whose difference :func:`elbo_per_point` is (same arguments)."""
    data = as_batch(data)
    if isinstance(guide, tuple):
        names = list(latent_shapes(vae.bound()[0], None, 1.0, *rows_of(data, slice(0, 1))))
        guide = MeanFieldGuide.from_moments({names[0]: guide})
    model, bound_guide = vae.bound()[0], bind(guide)
    n = num_rows(data)
    rows_at_once = max(1, EVAL_ELEMENTS // num_samples)
    out = []
    for start in range(0, n, rows_at_once):
        rows = range(start, min(start + rows_at_once, n))
        rows_index = (torch.arange(rows.start, rows.stop, device=data[0].device) if index is None
                      else index[rows.start:rows.stop])
        out.append(elbo_terms(model, bound_guide, rows_index, 1.0, *rows_of(data, rows), num_samples=num_samples))
    return ElboTerms(torch.cat([terms.reconstruction for terms in out]), torch.cat([terms.kl for terms in out]))
