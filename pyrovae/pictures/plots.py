"""Pictures of a run: prior samples, reconstructions, and the latent space, for any model and
guide that follow :mod:`pyrovae.programs`: the observed site's distribution gives the pictures
(its mean, or a draw), the guide's sites the latent codes. :func:`picture_rows` is the one place
that decides which rows a picture shows (run folder, TensorBoard and the picture commands).

The latent tour decodes chosen latent values: E[x | z] with the given sites fixed
(``poutine.condition``) and every other latent site at its mean under the model.

- :func:`interpolation`: z(t) between the posterior means μ_a, μ_b of two rows (the guide's
  means, as for a reconstruction, so the ends are the two reconstructions), every latent site
  at once; linear, z(t) = (1 − t) μ_a + t μ_b, or spherical (slerp, Shoemake 1985; for VAEs White
  2016, "Sampling Generative Networks"), z(t) = sin((1 − t)Ω)/sin Ω · μ_a + sin(tΩ)/sin Ω · μ_b with
  cos Ω = μ_a·μ_b / |μ_a||μ_b|, which keeps z near the shell where a high-dimensional N(0, I) puts
  its mass instead of cutting through the low-density middle.
- :func:`traversal`: one latent unit u of a site swept from −3 to 3 prior standard deviations
  around the prior mean (the model's p(z), with every other unit at its mean), the most active
  units first: activity A_u = Var_x(E_q[z_u | x]) over the pictured rows (Burda et al. 2016 call
  a unit active when A_u > 0.01).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from pyro import poutine

from ..core import interrupts
from ..core.errors import UsageError, option
from ..core.noise import forked_rng
from ..core.programs import Batch, num_rows, rows_of
from ..core.traces import sample_sites, unconditioned_observation
from ..core.vae import VAE
from ..evaluation.diagnostics import active_units, unit_variances
from ..evaluation.importance import MeanValues
from . import figures

SAMPLES_PNG = "samples.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"


class PictureRows(NamedTuple):
    """Rows to reconstruct: the data rows, their indices in the guide's table (None for a guide
    with an encoder) and the split they come from ("test" or "train")."""
    rows: Batch
    index: torch.Tensor | None
    split: str

    @property
    def images(self) -> str:
        return "test images" if self.split == "test" else "training images"


def picture_rows(vae: VAE, test: Batch, train: Batch, n: int) -> PictureRows:
    """The first N test rows for a guide with an encoder; else the first N training rows with
    their table indices (a guide without an encoder has parameters for training rows only)."""
    if vae.can("amortized"):
        return PictureRows(rows_of(test, slice(0, n)), None, "test")
    rows = rows_of(train, slice(0, n))
    return PictureRows(rows, torch.arange(num_rows(rows), device=rows[0].device), "train")


def _observed(trace, fixed: Sequence[str] = ()) -> dict:
    """The observed site of a model's trace (not one of the latent sites ``fixed`` by conditioning)."""
    return next(site for name, site in sample_sites(trace) if site["is_observed"] and name not in fixed)


@torch.no_grad()
def prior_samples(vae: VAE, template: Sequence[torch.Tensor], mean: bool = False, seed: int = 0) -> torch.Tensor:
    """x ~ p(x | z), z ~ p(z), one per row of ``template`` (whose x values are ignored; other
    tensors, e.g. labels, condition the model); with ``mean``, E[x | z] instead of a draw.
    Seeded by ``seed`` without touching the caller's generator."""
    model, _ = vae.bound()
    with forked_rng(vae.device, seed):
        trace = poutine.trace(poutine.uncondition(model)).get_trace(None, 1.0, *template)
    _, observed = unconditioned_observation(trace)
    return observed["fn"].mean if mean else observed["value"]


@torch.no_grad()
def guide_means(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """{site: [rows, *event]}: the guide's mean of each latent site (its centre for a site without
    a closed-form mean, e.g. a flow), each site given the means of the sites before it."""
    _, guide = vae.bound()
    with MeanValues():
        guide_trace = poutine.trace(guide).get_trace(index, 1.0, *batch)
    return {name: site["value"] for name, site in sample_sites(guide_trace) if not site["is_observed"]}


@torch.no_grad()
def reconstructions(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z] at the guide's mean of z (:func:`guide_means`)."""
    return decoded(vae, guide_means(vae, batch, index), batch, index)


@torch.no_grad()
def decoded(vae: VAE, latents: dict[str, torch.Tensor], batch: Sequence[torch.Tensor],
            index: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z] [rows, D] for one row of ``batch`` per row of the values ``latents`` fixes ({site:
    [rows, *event]}), every other latent site at its mean under the model (nothing drawn)."""
    model, _ = vae.bound()
    with MeanValues():   # entered first, so it sees the conditioned sites as set and leaves them
        trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(index, 1.0, *batch)
    return _observed(trace, list(latents))["fn"].mean


@torch.no_grad()
def _prior_sites(vae: VAE, template: Sequence[torch.Tensor]) -> dict[str, dict]:
    """The model's latent sites, in its order (the top layer first), from one run of the model on
    the first row of ``template`` with each site at its mean given the sites before it."""
    model, _ = vae.bound()
    with MeanValues():
        trace = poutine.trace(model).get_trace(None, 1.0, *rows_of(template, [0]))
    return {name: site for name, site in sample_sites(trace) if not site["is_observed"]}


def prior_moments(vae: VAE, template: Sequence[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{site: (mean, std)} [*event] of each latent site of the model (:func:`_prior_sites`)."""
    moments = {}
    for name, site in _prior_sites(vae, template).items():
        try:
            moments[name] = (site["fn"].mean[0], site["fn"].stddev[0])
        except NotImplementedError:
            raise UsageError(f"the prior of {name!r} ({type(site['fn']).__name__}) has no closed-form mean and "
                             "standard deviation to sweep its units around; pass another --site") from None
    return moments


def _path(start: torch.Tensor, end: torch.Tensor, steps: int, spherical: bool) -> torch.Tensor:
    """[steps, *shape]: START to END linearly or by slerp (module docstring)."""
    t = torch.linspace(0, 1, steps, dtype=start.dtype, device=start.device).reshape(-1, *[1] * start.dim())
    a, b = start.flatten(), end.flatten()
    cos = (a @ b / (a.norm() * b.norm()).clamp(min=1e-12)).clamp(-1, 1)
    omega = torch.arccos(cos)
    if not spherical or omega.sin() < 1e-6:   # (anti)parallel ends: slerp's weights are 0/0; the line is its limit
        return start + t * (end - start)
    return (torch.sin((1 - t) * omega) * start + torch.sin(t * omega) * end) / omega.sin()


@torch.no_grad()
def interpolation(vae: VAE, pair: Sequence[torch.Tensor], index: torch.Tensor | None, steps: int,
                  spherical: bool = False) -> torch.Tensor:
    """E[x | z(t)] [steps, D] along the path between the posterior means of the two rows of ``pair``
    (``index``: their rows in a guide's table), every latent site at once (module docstring)."""
    means = guide_means(vae, pair, index)
    path = {site: _path(mean[0], mean[1], steps, spherical) for site, mean in means.items()}
    return decoded(vae, path, rows_of(pair, [0] * steps))


@torch.no_grad()
def traversal(vae: VAE, template: Sequence[torch.Tensor], site: str, units: Sequence[int],
              values: Sequence[float]) -> torch.Tensor:
    """E[x | z] [len(units) * len(values), D]: for each unit u (flat index into the site's event),
    z_u = prior mean + v · prior std for each v of ``values``, every other unit at its prior mean."""
    mean, std = prior_moments(vae, template)[site]
    flat_mean, flat_std = mean.flatten(), std.flatten()
    v = torch.as_tensor(values, dtype=mean.dtype, device=mean.device)
    z = flat_mean.repeat(len(units) * len(v), 1)
    for row, unit in enumerate(units):
        z[row * len(v):(row + 1) * len(v), unit] = flat_mean[unit] + v * flat_std[unit]
    return decoded(vae, {site: z.reshape(-1, *mean.shape)}, rows_of(template, [0] * len(z)))


def save_scatter(points: dict[str, torch.Tensor], path: Path, title: str = "", xlabel: str = "",
                 ylabel: str = "", legend: str = "group") -> None:
    """2-D points (e.g. data vs samples, or latent means by class) as a scatter plot."""
    figures.scatter({label: xy.detach().cpu().numpy() for label, xy in points.items()}, Path(path), title, xlabel,
                    ylabel, legend)


def write_run_images(vae: VAE, data, run_dir: Path, n: int = 64, caption: str = "") -> None:
    """samples.png and reconstructions.png in RUN_DIR (grids for images, scatter plots otherwise),
    each titled with what it shows, then ``caption`` (the run's description)."""
    caption = f" · {caption}" if caption else ""
    shape = data.dataset.image_shape
    test, train = data.test, data.train
    if shape is not None:
        template = rows_of(test, slice(0, n)) if num_rows(test) >= n else rows_of(train, slice(0, n))
        figures.sample_grid(prior_samples(vae, template, mean=True).cpu(), shape, run_dir / SAMPLES_PNG,
                    caption=f"prior samples (decoder means){caption}")
        interrupts.check()   # under fit's StopFlag, a signal stops the pictures here
        pictured = picture_rows(vae, test, train, n // 2)
        figures.reconstruction_figure(pictured.rows[0].cpu(), reconstructions(vae, pictured.rows, pictured.index).cpu(),
                                      shape, run_dir / RECONSTRUCTIONS_PNG,
                                      caption=f"{pictured.images} and reconstructions{caption}")
    elif data.dataset.data_dim == 2:
        template = rows_of(test, slice(0, 2000))
        save_scatter({"data": template[0], "samples": prior_samples(vae, template)}, run_dir / SAMPLES_PNG,
                     f"prior samples{caption}", "x1", "x2")
        if vae.can("amortized"):
            save_scatter({"data": template[0], "reconstruction": reconstructions(vae, template)},
                         run_dir / RECONSTRUCTIONS_PNG, f"test reconstructions{caption}", "x1", "x2")


@torch.no_grad()
def latent_map(vae: VAE, batch: Sequence[torch.Tensor], labels: torch.Tensor | None, path: Path, *,
               site: str | None = None, index: torch.Tensor | None = None, caption: str = "",
               legend: str = "label") -> dict:
    """The guide's means (:func:`guide_means`) of a latent site (:func:`latent_site`: the model's top
    layer by default) for the rows of ``batch`` (``index``: their rows in a guide's table), in 2-D:
    the latents themselves when the site has 2 dims, else their first two principal components;
    coloured by ``labels`` (named ``legend``)."""
    site, loc = site_means(vae, batch, index, site)
    loc = loc.reshape(num_rows(batch), -1)
    projection = "identity"
    if loc.shape[1] > 2:
        centered = loc - loc.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        loc = centered @ v[:2].T
        projection = "pca"
    elif loc.shape[1] == 1:
        loc = torch.cat([loc, torch.zeros_like(loc)], dim=1)
    groups = {"unlabelled": loc} if labels is None else {str(int(c)): loc[labels == c] for c in labels.unique()}
    axis = "principal component" if projection == "pca" else site
    caption = f" · {caption}" if caption else ""
    save_scatter(groups, path, f"posterior means of {site} ({projection}){caption}", f"{axis} 1", f"{axis} 2", legend)
    return {"projection": projection, "points": num_rows(batch), "site": site}


def latent_site(vae: VAE, template: Sequence[torch.Tensor], site: str | None) -> str:
    """``site``, checked against the model's latent sites; None: the model's first (its top layer)."""
    sites = list(_prior_sites(vae, template))
    if site is None:
        return sites[0]
    if site not in sites:
        raise UsageError(f"{option('site', site)}: the model has no latent site of that name; pass one of "
                         f"{', '.join(sites)}")
    return site


def site_means(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None,
               site: str | None) -> tuple[str, torch.Tensor]:
    """(site, the guide's means of it [rows, *event], :func:`guide_means`) for a site checked by
    :func:`latent_site` that the guide has a posterior for."""
    site = latent_site(vae, batch, site)
    means = guide_means(vae, batch, index)
    if site not in means:
        raise UsageError(f"{option('site', site)}: the guide has no posterior for this site; pass one of "
                         f"{', '.join(means)}")
    return site, means[site]


def draw_interpolation(vae: VAE, pictured: PictureRows, images: tuple[int, int], *, steps: int, spherical: bool,
                       image_shape: Sequence[int], path: Path, caption: str = "") -> dict:
    """One row: image A, the decoder means along the path between the posterior means of A and B
    (:func:`interpolation`), image B; ``images`` index the rows of ``pictured``."""
    available = num_rows(pictured.rows)
    if max(images) >= available or min(images) < 0:
        raise UsageError(f"{option('images', ','.join(map(str, images)))}: the {pictured.split} split has rows 0 to "
                         f"{available - 1} to picture; pass two of them")
    pair = rows_of(pictured.rows, list(images))
    index = None if pictured.index is None else pictured.index[list(images)]
    path_images = interpolation(vae, pair, index, steps, spherical)
    row = torch.cat([pair[0][:1].reshape(1, -1), path_images.reshape(steps, -1), pair[0][1:].reshape(1, -1)])
    how = "spherical" if spherical else "linear"
    a, b = images
    figures.labelled_rows([row.cpu()], [f"{pictured.split} {a} → {b}"], image_shape, path,
                          caption=f"{caption} · {pictured.images} {a} and {b} (ends) and E[x | z] along the {how} "
                                  f"path between their posterior means, {steps} steps")
    return {"images": list(images), "split": pictured.split, "steps": steps, "path": how}


def draw_traversal(vae: VAE, pictured: PictureRows, site: str | None, *, units: int, steps: int, span: float,
                   image_shape: Sequence[int], path: Path, caption: str = "") -> dict:
    """One row per unit of a latent site, the most active first (activity from the posterior means
    of the rows of ``pictured``), each swept over ``steps`` values from −span to span prior
    standard deviations (:func:`traversal`)."""
    site, means = site_means(vae, pictured.rows, pictured.index, site)
    flat = means.reshape(num_rows(pictured.rows), -1)
    activity = unit_variances(flat)
    order = torch.argsort(activity, descending=True, stable=True)[:units].tolist()
    values = torch.linspace(-span, span, steps).tolist()
    images = traversal(vae, pictured.rows, site, order, values).reshape(len(order), steps, -1)
    figures.labelled_rows(list(images.cpu()), [f"{site}[{u}]  {activity[u]:.2g}" for u in order], image_shape, path,
                          caption=f"{caption} · E[x | z] with one unit of {site} from −{span:g} to {span:g} prior sd, "
                                  f"the others at the prior mean; rows: the most active units first (label: unit, "
                                  f"Var of its posterior mean over {num_rows(pictured.rows)} {pictured.images})")
    return {"site": site, "units": order, "activity": [round(float(activity[u]), 6) for u in order],
            "active_units": active_units(flat), "values": [round(v, 6) for v in values],
            "split": pictured.split, "points": num_rows(pictured.rows)}
