"""An amortized normalizing-flow guide: inverse autoregressive flows on the encoder's Gaussian
(Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, "Improved Variational Inference
with Inverse Autoregressive Flow").

For each latent layer the encoder gives (μ, σ, h) from the layer's parent, and

    z_0 ~ N(μ(x), diag σ(x)²),   z_k = σ_k(z_{k-1}, h) ⊙ z_{k-1} + m_k(z_{k-1}, h),   k = 1..K

where (m_k, log σ_k) is a MADE network (Germain et al. 2015) that sees h and is autoregressive in
z, so log q(z_K | x) = log N(z_0) - Σ_k Σ_d log σ_k,d. Each step is Pyro's own
``ConditionalAffineAutoregressive`` transform; the order of the variables is reversed between
steps. The KL of such a q has no closed form: the ELBO is Monte Carlo.

The test-time fit of ``compare`` needs the best member of the same family for each datapoint
(Cremer et al.'s "Flow" column): :class:`PerPointFlowGuide` gives every point its own base
Gaussian and its own MADE weights, through Pyro's ``AffineAutoregressive``. Started from the
encoder, the context h_i is folded into each point's first-layer bias, so q_i starts as the
encoder's q(z | x_i) exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive, ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from ..core.options import MAX_SIZE, Options, between, default_of, option
from ..core.programs import LatentLayer, data_plate
from .amortized import MIN_SCALE, Features, built_from, encoder_nets

MADE_LR_SCALE = 0.1   # per-point fits step the MADE weights 10x more gently than the base Gaussian


def _flow_steps(dim: int, context: int, hidden: int, flows: int) -> nn.ModuleList:
    steps = []
    for k in range(flows):
        order = torch.arange(dim) if k % 2 == 0 else torch.arange(dim - 1, -1, -1)
        steps.append(ConditionalAffineAutoregressive(
            ConditionalAutoRegressiveNN(dim, context, [hidden], permutation=order)))
    return nn.ModuleList(steps)


@dataclass
class FlowOptions(Options):
    flows: int = option(2, "IAF steps per latent layer.", check=between(1, 100))
    flow_hidden: int = option(0, "Hidden units of each MADE (0: twice the latent layer's size).",
                              check=lambda h: None if h == 0 or isinstance(h, int) and 2 <= h <= MAX_SIZE else
                              f"must be 0 (twice the latent size) or in [2, {MAX_SIZE}]")


class FlowGuide(nn.Module):
    """q_φ(z | x): K conditional IAF steps on a diagonal Gaussian, per latent layer."""

    cli_help = "--flows inverse autoregressive flows on the encoder's Gaussian"
    Options = FlowOptions
    amortized = True
    per_datapoint = False

    def __init__(self, layers: Sequence[LatentLayer], data_dim: int, *, flows: int = default_of(FlowOptions, "flows"),
                 flow_hidden: int = default_of(FlowOptions, "flow_hidden"), min_scale: float = MIN_SCALE,
                 features: Features | None = None):
        """``flows``, ``flow_hidden`` (0: twice the latent layer's size): :class:`FlowOptions`'."""
        super().__init__()
        if flows < 1:
            raise ValueError(f"a flow guide needs at least one flow step, got {flows}")
        self.layers, self.min_scale = list(layers), min_scale
        # the context h has the size of the latent layer: enough to steer each of its dimensions
        self.encoders = encoder_nets(self.layers, data_dim, lambda dim: 3 * dim, features)
        self.flows = nn.ModuleDict({layer.name: _flow_steps(layer.dim, layer.dim, flow_hidden or 2 * layer.dim, flows)
                                    for layer in self.layers})
        self.mean_field = all(layer.parent == "x" for layer in self.layers)

    @classmethod
    def from_options(cls, options: FlowOptions, model: nn.Module, num_data: int) -> "FlowGuide":
        layers, data_dim, features = built_from(model, cls)
        if options.flow_hidden and any(options.flow_hidden < layer.dim for layer in layers):
            raise ValueError(f"--flow-hidden {options.flow_hidden} is smaller than a latent layer "
                             f"({max(layer.dim for layer in layers)} units); a MADE needs at least as many")
        return cls(layers, data_dim, flows=options.flows, flow_hidden=options.flow_hidden, features=features)

    def encode(self, name: str, parent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(μ, σ, h) of the layer ``name`` given its parent's value."""
        loc, raw_scale, context = self.encoders[name](parent).chunk(3, dim=-1)
        return loc, nn.functional.softplus(raw_scale) + self.min_scale, context

    def site_dist(self, name: str, parent: torch.Tensor) -> dist.TransformedDistribution:
        loc, scale, context = self.encode(name, parent)
        steps = [step.condition(context) for step in self.flows[name]]
        return dist.TransformedDistribution(dist.Normal(loc, scale).to_event(1), steps)

    def forward(self, x: torch.Tensor) -> None:
        values = {"x": x}
        with data_plate(x):
            for layer in self.layers:
                values[layer.name] = pyro.sample(layer.name, self.site_dist(layer.name, values[layer.parent]))

    def local_family(self, batch: Sequence[torch.Tensor], init: str) -> "PerPointFlowGuide":
        """Per-point flows for the rows of ``batch``: from the encoder's q (``init="q"``) or from
        N(0, I) through identity flows (``init="prior"``)."""
        return PerPointFlowGuide.from_guide(self, batch[0], from_encoder=(init == "q"))


class _PerPointMADE:
    """A MADE network with its own weights per datapoint: ``weights[j]`` is [rows, out, in]."""

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor],
                 masks: Sequence[torch.Tensor], dim: int, permutation: torch.Tensor):
        self.weights, self.biases, self.masks, self.dim = weights, biases, masks, dim
        self.permutation = permutation   # read by AffineAutoregressive's inverse

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = z
        for j, (weight, bias, mask) in enumerate(zip(self.weights, self.biases, self.masks)):
            if j > 0:
                h = torch.relu(h)
            h = torch.einsum("...bi,boi->...bo", h, weight * mask) + bias
        mean, log_scale = h.unflatten(-1, (2, self.dim)).unbind(-2)
        return mean, log_scale


class PerPointFlowGuide(nn.Module):
    """For each row i and latent site: z_0 ~ N(loc_i, scale_i²) and K IAF steps with row i's own
    MADE weights (the architecture and masks of a :class:`FlowGuide`). Rows are independent."""

    amortized = False
    per_datapoint = True
    mean_field = True
    lr_warmup = 50   # steps of a linear learning-rate ramp in a per-point fit

    def __init__(self, sites: dict[str, int], num_rows: int, masks: dict[str, list[list[torch.Tensor]]],
                 permutations: dict[str, list[torch.Tensor]], layer_sizes: dict[str, list[tuple[int, int]]]):
        super().__init__()
        self.sites, self.num_rows = dict(sites), num_rows
        self.loc = nn.ParameterDict({n: nn.Parameter(torch.zeros(num_rows, d)) for n, d in sites.items()})
        self.log_scale = nn.ParameterDict({n: nn.Parameter(torch.zeros(num_rows, d)) for n, d in sites.items()})
        self.weights, self.biases = nn.ParameterDict(), nn.ParameterDict()
        for name, steps in masks.items():
            for k, step_masks in enumerate(steps):
                for j, mask in enumerate(step_masks):
                    out, inp = layer_sizes[name][j]
                    key = f"{name}__{k}__{j}"
                    self.register_buffer(f"mask__{key}", mask.clone())
                    self.weights[key] = nn.Parameter(torch.zeros(num_rows, out, inp))
                    self.biases[key] = nn.Parameter(torch.zeros(num_rows, out))
        self.steps = {name: len(steps) for name, steps in masks.items()}
        self.depth = {name: len(sizes) for name, sizes in layer_sizes.items()}
        self.permutations = permutations

    @classmethod
    def from_guide(cls, guide: FlowGuide, x: torch.Tensor, from_encoder: bool) -> "PerPointFlowGuide":
        n = x.shape[0]
        masks, perms, sizes = {}, {}, {}
        for layer in guide.layers:
            steps = guide.flows[layer.name]
            masks[layer.name] = [[m[:, layer.dim:] if j == 0 else m for j, m in enumerate(s.nn.masks)]
                                 for s in steps]
            perms[layer.name] = [s.nn.permutation for s in steps]
            sizes[layer.name] = [(lin.out_features, lin.in_features - (layer.dim if j == 0 else 0))
                                 for j, lin in enumerate(steps[0].nn.layers)]
        table = cls({layer.name: layer.dim for layer in guide.layers}, n, masks, perms, sizes).to(x)
        with torch.no_grad():
            values = {"x": x}
            for layer in guide.layers:
                loc, scale, context = guide.encode(layer.name, values[layer.parent])
                if from_encoder:
                    table.loc[layer.name].copy_(loc)
                    table.log_scale[layer.name].copy_(scale.log())
                for k, step in enumerate(guide.flows[layer.name]):
                    for j, lin in enumerate(step.nn.layers):
                        key = f"{layer.name}__{k}__{j}"
                        weight, bias = lin.weight, lin.bias.expand(n, -1)
                        if j == 0:   # the context is the first `dim` inputs: fold it into the bias
                            bias = bias + context @ weight[:, :layer.dim].T if from_encoder else bias
                            weight = weight[:, layer.dim:]
                        last = j == len(step.nn.layers) - 1
                        if last and not from_encoder:   # identity flow: m = 0, log σ = 0
                            continue
                        table.weights[key].copy_(weight.expand(n, *weight.shape))
                        table.biases[key].copy_(bias)
                # a deeper layer's parent: the parent's base mean pushed through its flow
                values[layer.name] = _push(table, layer.name, loc if from_encoder else torch.zeros_like(loc))
        return table

    def row_parameters(self) -> list[nn.Parameter]:
        return list(self.parameters())

    def param_groups(self, lr: float) -> list[dict]:
        """Adam groups for a per-point fit: the base Gaussian at ``lr``, the MADE weights at lr / 10
        (at the base's rate one step from the encoder's flow loses tens of nats: a weight moves
        every output of its layer); ``lr_warmup`` ramps both up, as Adam's first steps are as
        large as the learning rate in every coordinate."""
        made = list(self.weights.parameters()) + list(self.biases.parameters())
        base = list(self.loc.parameters()) + list(self.log_scale.parameters())
        return [{"params": base, "lr": lr}, {"params": made, "lr": lr * MADE_LR_SCALE}]

    def _made(self, name: str, k: int, rows: torch.Tensor) -> _PerPointMADE:
        keys = [f"{name}__{k}__{j}" for j in range(self.depth[name])]
        return _PerPointMADE([self.weights[key][rows] for key in keys], [self.biases[key][rows] for key in keys],
                             [getattr(self, f"mask__{key}") for key in keys], self.sites[name],
                             self.permutations[name][k])

    def _site_dist(self, name: str, rows: torch.Tensor) -> dist.TransformedDistribution:
        base = dist.Normal(self.loc[name][rows], self.log_scale[name][rows].exp()).to_event(1)
        return dist.TransformedDistribution(base, [AffineAutoregressive(self._made(name, k, rows))
                                                   for k in range(self.steps[name])])

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> None:
        rows = torch.arange(x.shape[0], device=x.device) if index is None else index
        with data_plate(x):
            for name in self.sites:
                pyro.sample(name, self._site_dist(name, rows))


def _push(table: PerPointFlowGuide, name: str, z0: torch.Tensor) -> torch.Tensor:
    """z0 through the site's per-point flow steps (all rows)."""
    rows = torch.arange(z0.shape[0], device=z0.device)
    z = z0
    for transform in table._site_dist(name, rows).transforms:
        z = transform(z)
    return z
