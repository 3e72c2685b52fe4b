"""Seeded noise per (site, particle, row): draws that do not depend on how work is batched.

The standard-normal noise of latent site s, particle (or chain) k and row i comes from a tile of
``RNG_TILE`` (particles x rows) drawn by a generator seeded by (seed, stream, s, tile), so every
draw is a pure function of (seed, s, k, i): results do not depend on the batch size, the chunk
size, a point's batchmates, an interrupted-and-resumed run, or which process of a distributed
run evaluates the point. :class:`FixedNoise` makes a guide's draws from that noise by
reparameterization, for every site whose distribution is a Normal, a MultivariateNormal, or a
transformed one of these (flows); a site it cannot reparameterize is drawn from torch's global
generator, and the estimator says its results depend on batching. Training uses the same noise
when a run's draws must not depend on how processes share a batch (``--noise per-row``).
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Callable, Iterator

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

RNG_TILE = (50, 25)         # particles x rows drawn from one seeded generator


@contextlib.contextmanager
def forked_rng(device: torch.device | None = None, seed: int | None = None) -> Iterator[None]:
    """torch's global generators forked for the block (the CPU's, and ``device``'s when it is a CUDA
    device) and, unless ``seed`` is None, seeded by it: draws inside come from the seed, and the
    caller's generators are as they were after the block."""
    with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def tile_seed(*ints: int) -> int:
    """A 63-bit seed from integers (splitmix64 folding), so neighbouring tiles are unrelated."""
    h = 0x9E3779B97F4A7C15
    for value in ints:
        h = (h ^ (value & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h = (h ^ (h >> 31)) * 0x94D049BB133111EB & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 29)) >> 1


def site_stream(name: str) -> int:
    """A stable integer for a site name (crc32: the same in every process and Python version)."""
    return zlib.crc32(name.encode())


def noise(seed: int, stream: int, particles: range, rows: range, shape: tuple[int, ...],
          like: torch.Tensor, *, kind: str = "normal", tile: tuple[int, int] = RNG_TILE) -> torch.Tensor:
    """Standard-normal (or uniform, ``kind="uniform"``) noise [len(particles), len(rows), *shape],
    a pure function of (seed, stream, particle, row), assembled from ``tile``-sized tiles."""
    tp, tr = tile
    p0, r0 = particles.start // tp, rows.start // tr
    draw = torch.randn if kind == "normal" else torch.rand
    generator = torch.Generator(device=like.device)
    tiles = [[draw(tp, tr, *shape, generator=generator.manual_seed(tile_seed(seed, stream, p, r)),
                   device=like.device, dtype=like.dtype)
              for r in range(r0, (rows.stop - 1) // tr + 1)]
             for p in range(p0, (particles.stop - 1) // tp + 1)]
    eps = torch.cat([torch.cat(row, dim=1) for row in tiles], dim=0)
    return eps[particles.start - p0 * tp: particles.stop - p0 * tp, rows.start - r0 * tr: rows.stop - r0 * tr]


def noise_shape(fn: dist.Distribution) -> torch.Size:
    """The event shape of the standard-normal ``eps`` that :func:`reparameterize` takes for ``fn``:
    its own, or its base's for a transformed distribution (a Gaussian pushed onto a K-simplex
    draws K − 1 numbers)."""
    shape = fn.event_shape
    if isinstance(fn, torch.distributions.TransformedDistribution):
        for transform in reversed(fn.transforms):
            shape = transform.inverse_shape(shape)
    return torch.Size(shape)


def reparameterize(fn: dist.Distribution, eps: torch.Tensor) -> torch.Tensor | None:
    """A draw of ``fn`` from standard-normal ``eps`` [..., *event_shape], or None when ``fn`` is
    not a (transformed, independent) Normal or MultivariateNormal."""
    if isinstance(fn, torch.distributions.Independent):
        return reparameterize(fn.base_dist, eps)
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc + fn.scale * eps
    if isinstance(fn, torch.distributions.MultivariateNormal):
        return fn.loc + (fn.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)
    if isinstance(fn, torch.distributions.TransformedDistribution):
        value = reparameterize(fn.base_dist, eps)
        if value is not None:
            for transform in fn.transforms:   # through each transform's own cache: log_prob needs no inverse
                value = transform(value)
        return value
    return None


class FixedNoise(Messenger):
    """Sets each latent guide site to its reparameterized draw from ``eps_for(name, noise_shape(fn))``
    ([particles, rows, *event_shape]); records the sites it could not reparameterize. Enter it
    inside the particle plate: the value is set before that plate broadcasts the distribution."""

    def __init__(self, eps_for: Callable[[str, torch.Size], torch.Tensor]):
        super().__init__()
        self.eps_for = eps_for
        self.unsupported: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["value"] is not None or site_is_subsample(msg):
            return
        value = reparameterize(msg["fn"], self.eps_for(msg["name"], noise_shape(msg["fn"])))
        if value is None:
            self.unsupported.add(msg["name"])
        else:
            msg["value"] = value


def with_noise(guide: Callable, eps_for: Callable[[str, torch.Size], torch.Tensor],
               unsupported: set[str] | None = None) -> Callable:
    """``guide`` drawing from :class:`FixedNoise`; names of sites it could not fix go to ``unsupported``."""
    def noisy_guide(*args, **kwargs):
        messenger = FixedNoise(eps_for)
        with messenger:
            result = guide(*args, **kwargs)
        if unsupported is not None:
            unsupported.update(messenger.unsupported)
        return result
    return noisy_guide


def seeded_noise(seed: int, stream: int, particles: range, rows: range, like: torch.Tensor
                 ) -> Callable[[str, torch.Size], torch.Tensor]:
    """eps_for(site, event_shape) for one chunk of particles and rows."""
    return lambda name, shape: noise(seed, stream ^ site_stream(name), particles, rows, tuple(shape), like)


def bernoulli(probs: torch.Tensor, generator: torch.Generator, out: torch.Tensor | None = None) -> torch.Tensor:
    """x ~ Bernoulli(probs) elementwise, as u < p with u ~ U(0, 1) from ``generator``: on CPU the
    very draws of ``torch.bernoulli(probs, generator)`` (so runs binarized either way agree).

    ``out`` (contiguous, of ``probs``' shape and dtype) receives the draws, which are the same
    with or without it: a draw repeated every epoch then reuses one buffer instead of allocating
    (and page-faulting in) a data set's worth of memory each time. MNIST's 47M pixels on an AMD
    EPYC, 2 threads, torch 2.14: 0.35 s into a reused buffer (0.19 s of it torch.rand), 0.52 s
    allocating, 0.53 s for ``torch.bernoulli``."""
    if out is None:
        out = torch.empty(probs.shape, device=probs.device, dtype=probs.dtype)
    torch.rand(probs.shape, generator=generator, out=out)
    return out.lt_(probs)   # in place: 1.0 where u < p, else 0.0


class BernoulliRedraws:
    """x ~ Bernoulli(probs) elementwise, drawn anew at every call into one buffer (dynamic
    binarization: a data set's draws every epoch).

    A pixel with p = 0 or p = 1 has one value only, so with ``skip_certain`` only the pixels with
    0 < p < 1 are drawn (u < p, u ~ U(0, 1) from the generator) and written over a buffer whose
    certain pixels were set once. MNIST's 60,000 training rows hold 18.5% of their 47M pixels
    strictly between 0 and 1: on an Intel Xeon, 2 threads, torch 2.14, 0.04 s a draw against
    0.14 s drawing every pixel into a reused buffer (:func:`bernoulli`), after 0.17 s to find the
    pixels (three epochs: 0.31 s against 0.47). ``probs`` lie in [0, 1]. Where more than
    ``MAX_UNCERTAIN`` of the pixels are uncertain, every pixel is drawn (indexing a pixel costs
    about as much as drawing one). ``skip_certain=False``: every pixel, the very draws of
    ``torch.bernoulli`` on CPU (runs trained before pyrovae skipped the certain pixels resume
    with the draws they began with)."""

    MAX_UNCERTAIN = 0.4

    def __init__(self, probs: torch.Tensor, skip_certain: bool = True):
        self.probs, self.index = probs, None
        if not skip_certain:
            self.out = torch.empty(probs.shape, device=probs.device, dtype=probs.dtype)
            return
        # one pass each, no count of a boolean mask (summing one costs as much as drawing): for p
        # in [0, 1], floor(p) is the value of a certain pixel, and p > floor(p) where 0 < p < 1
        self.out = torch.floor(probs).contiguous()   # row-major, as flat's indices
        flat = probs.reshape(-1)
        index = (flat > self.out.view(-1)).nonzero().squeeze(1)
        if index.numel() <= self.MAX_UNCERTAIN * flat.numel():
            self.index, self.values = index, flat[index]
            self.uniforms = torch.empty_like(self.values)

    @property
    def skips_certain(self) -> bool:
        return self.index is not None

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        if self.index is None:
            return bernoulli(self.probs, generator, out=self.out)
        torch.rand(self.values.shape, generator=generator, out=self.uniforms)
        return self.out.view(-1).index_copy_(0, self.index, self.uniforms.lt_(self.values)).view(self.probs.shape)
