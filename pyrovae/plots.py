"""Pictures of a run: prior samples, test reconstructions, and the latent space."""
from __future__ import annotations

from pathlib import Path

import torch

from .guides import AmortizedGuide
from .model import VAE

SAMPLES_PNG = "samples.png"
RECONSTRUCTIONS_PNG = "reconstructions.png"


@torch.no_grad()
def prior_samples(vae: VAE, n: int, mean: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """x ~ p(x | z), z ~ p(z); with ``mean``, the decoder's mean E[x | z] instead of a draw."""
    device = next(vae.parameters()).device
    z = torch.randn(n, vae.latent_dim, generator=generator).to(device)
    likelihood = vae.decoder.likelihood_dist(z).base_dist
    if mean:
        return likelihood.mean
    return likelihood.sample() if generator is None else _sample_with(likelihood, generator)


def _sample_with(likelihood, generator: torch.Generator) -> torch.Tensor:
    if isinstance(likelihood, torch.distributions.Bernoulli):
        return torch.bernoulli(likelihood.probs.cpu(), generator=generator).to(likelihood.probs.device)
    noise = torch.randn(likelihood.loc.shape, generator=generator).to(likelihood.loc.device)
    return likelihood.loc + likelihood.scale * noise


@torch.no_grad()
def reconstructions(vae: VAE, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """Decoder means at the guide's means: E[x | z = loc(x)]."""
    loc, _ = vae.guide_module(x, index)
    return vae.decoder.likelihood_dist(loc).base_dist.mean


def reconstruction_pairs(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """Rows of x interleaved with their reconstructions: x_0, x̂_0, x_1, x̂_1, ..."""
    index = torch.arange(len(x), device=x.device)
    return torch.stack([x, reconstructions(vae, x, index)], dim=1).reshape(-1, x.shape[-1])


def save_grid(images: torch.Tensor, image_shape: tuple[int, ...], path: Path, nrow: int = 8) -> None:
    from torchvision.utils import save_image

    from .runs import atomic_path
    with atomic_path(Path(path)) as tmp:
        save_image(images.reshape(-1, *image_shape).clamp(0, 1).cpu(), tmp, nrow=nrow, format="png")


def save_scatter(points: dict[str, torch.Tensor], path: Path, title: str = "") -> None:
    """2-D points (e.g. data vs samples, or latent means) as a scatter plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .runs import atomic_path
    figure, axes = plt.subplots(figsize=(5, 5))
    for label, xy in points.items():
        xy = xy.cpu()
        axes.scatter(xy[:, 0], xy[:, 1], s=3, alpha=0.5, label=label)
    axes.legend(markerscale=4)
    axes.set_title(title)
    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)


def write_run_images(vae: VAE, data, run_dir: Path, n: int = 64) -> None:
    """samples.png and reconstructions.png in RUN_DIR (grids for images, scatter plots otherwise)."""
    shape = data.dataset.image_shape
    generator = torch.Generator().manual_seed(0)
    if shape is not None:
        save_grid(prior_samples(vae, n, mean=True, generator=generator), shape, run_dir / SAMPLES_PNG)
        # a mean-field guide has parameters for training rows only
        x = data.test[: n // 2] if isinstance(vae.guide_module, AmortizedGuide) else data.train[: n // 2]
        save_grid(reconstruction_pairs(vae, x), shape, run_dir / RECONSTRUCTIONS_PNG, nrow=8)
    elif data.dataset.data_dim == 2:
        save_scatter({"data": data.test[:2000], "samples": prior_samples(vae, 2000, generator=generator)},
                     run_dir / SAMPLES_PNG, "prior samples")
        x = data.test[:2000]
        if isinstance(vae.guide_module, AmortizedGuide):
            save_scatter({"data": x, "reconstruction": reconstructions(vae, x)}, run_dir / RECONSTRUCTIONS_PNG,
                         "test reconstructions")


@torch.no_grad()
def latent_map(vae: VAE, x: torch.Tensor, labels: torch.Tensor | None, path: Path) -> dict:
    """Encoder means of x in 2-D: the latents themselves when latent_dim is 2, else their
    first two principal components."""
    loc, _ = vae.guide_module(x)
    projection = "identity"
    if loc.shape[1] > 2:
        centered = loc - loc.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        loc = centered @ v[:2].T
        projection = "pca"
    elif loc.shape[1] == 1:
        loc = torch.cat([loc, torch.zeros_like(loc)], dim=1)
    groups = {"x": loc} if labels is None else {str(int(c)): loc[labels == c] for c in labels.unique()}
    save_scatter(groups, path, f"latent means ({projection})")
    return {"projection": projection, "points": len(x)}
