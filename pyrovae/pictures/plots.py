"""Pictures of a run: prior samples, reconstructions, and the latent space, for any model and
guide that follow :mod:`pyrovae.programs`: the observed site's distribution gives the pictures
(its mean, or a draw), the guide's sites the latent codes. :func:`picture_rows` is the one place
that decides which rows a picture shows (run folder, TensorBoard and ``pyrovae reconstruct``)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple, Sequence

import torch
from pyro import poutine

from ..core import interrupts
from ..core.noise import forked_rng
from ..core.programs import Batch, num_rows, rows_of
from ..core.traces import sample_sites, unconditioned_observation
from ..core.vae import VAE
from ..evaluation.importance import MeanValues
from ..inference.local_fit import guide_moments
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


def _observed(trace) -> dict:
    return next(site for _, site in sample_sites(trace) if site["is_observed"])


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
def reconstructions(vae: VAE, batch: Sequence[torch.Tensor], index: torch.Tensor | None = None) -> torch.Tensor:
    """E[x | z] at the guide's mean of z (its centre for a site without a closed-form mean, e.g. a flow)."""
    model, guide = vae.bound()
    with MeanValues():
        guide_trace = poutine.trace(guide).get_trace(index, 1.0, *batch)
    trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(index, 1.0, *batch)
    return _observed(trace)["fn"].mean


def save_scatter(points: dict[str, torch.Tensor], path: Path, title: str = "", xlabel: str = "",
                 ylabel: str = "") -> None:
    """2-D points (e.g. data vs samples, or latent means by class) as a scatter plot."""
    figures.scatter({label: xy.detach().cpu().numpy() for label, xy in points.items()}, Path(path), title, xlabel, ylabel)


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
def latent_map(vae: VAE, batch: Sequence[torch.Tensor], labels: torch.Tensor | None, path: Path,
               site: str | None = None) -> dict:
    """The guide's means of a latent site (the first by default) for the rows of ``batch``, in
    2-D: the latents themselves when the site has 2 dims, else their first two principal components."""
    moments = guide_moments(vae, batch, None)
    site = site or next(iter(moments))
    loc = moments[site][0].reshape(num_rows(batch), -1)
    projection = "identity"
    if loc.shape[1] > 2:
        centered = loc - loc.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        loc = centered @ v[:2].T
        projection = "pca"
    elif loc.shape[1] == 1:
        loc = torch.cat([loc, torch.zeros_like(loc)], dim=1)
    groups = {"x": loc} if labels is None else {str(int(c)): loc[labels == c] for c in labels.unique()}
    axis = "principal component" if projection == "pca" else site
    save_scatter(groups, path, f"posterior means of {site} ({projection})", f"{axis} 1", f"{axis} 2")
    return {"projection": projection, "points": num_rows(batch), "site": site}
