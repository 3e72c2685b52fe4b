"""A convolutional VAE for C×H×W images: p_θ(x, z) = p(z) p_θ(x | z) with a transposed-conv decoder,
and conv layers for the guides' encoders.

    z ~ N(0, I_d)
    h = ReLU(MLP(z)) reshaped to [c_L, h_L, w_L]
    x | z ~ Bernoulli(logits = f_θ(z)) or Normal(f_θ(z), σ),   f_θ(z) = ConvT_1 ∘ ReLU ∘ ... ∘ ConvT_L (h)

Every conv layer of the encoder is a 4×4 convolution of stride 2 and padding 1 followed by a
ReLU, which maps a side of s pixels to ⌊s / 2⌋; the decoder mirrors them with 4×4 transposed
convolutions of stride 2, which map s' to 2 s' + p with the output padding p = s mod 2 chosen
per layer, so any H × W comes back to its own size (Dumoulin & Visin 2016, "A guide to
convolution arithmetic for deep learning"). This is the stride-2 architecture of DCGAN
(Radford, Metz & Chintala 2016) as small image VAEs use it; ``--channels`` gives the widths and
the depth (MNIST: 28 → 14 → 7 with 32, 64 channels), ``--hidden`` the fully connected layers
between the conv features and z. The likelihoods are the MLP model's
(:mod:`.likelihoods`), over the C·H·W numbers of an image as one event.

Data reach the model as flat rows [..., C·H·W] (pyrovae's layout); the networks reshape them.
The encoder is the model's to define but the guide's to own: the ``features`` hook
(:mod:`pyrovae.core.contract`) gives each built-in guide a new conv stack for its encoder
(amortized, flow, full-covariance, semi-amortized); a mean-field guide has no encoder and
needs none. Data without an image shape are refused.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..core.errors import UsageError, option as named
from ..core.nets import ReLU, initialize, mlp
from ..core.options import default_of, option, parse_widths, values, widths
from .vae import VAEModel, VAEOptions

KERNEL, STRIDE, PADDING = 4, 2, 1   # each conv layer halves the height and width (rounding down)


def halved(side: int) -> int:
    """A side of ``side`` pixels after one conv layer: ⌊(side + 2 padding − kernel) / stride⌋ + 1 = ⌊side / 2⌋."""
    return (side + 2 * PADDING - KERNEL) // STRIDE + 1


def _channels(value) -> str | None:
    problem = widths(value)
    return problem or (None if value else "needs at least one conv layer (use --model vae for none)")


@dataclass
class ConvOptions(VAEOptions):
    """The MLP model's options, and the conv layers'."""

    channels: tuple[int, ...] = option((32, 64), "Comma list of the channels of the conv layers, one 4x4 stride-2 "
                                       "convolution each, halving the image's height and width (the decoder "
                                       "mirrors them with transposed convolutions); its length is the depth.",
                                       parse=functools.partial(parse_widths, example="--channels 32,64 (one number "
                                                                                     "per conv layer)"),
                                       check=_channels)

    def check(self) -> None:
        super().check()
        if self.activation != "relu":   # its conv stacks are ReLU networks throughout
            raise UsageError(f"{named('activation', self.activation)} is for the MLP models; {named('model', 'conv')} "
                             f"uses ReLU between its layers; drop {named('activation')}")


class ConvEncoder(nn.Module):
    """Rows [..., C·H·W] to features [..., ``out_features``]: the conv layers, each followed by a ReLU."""

    def __init__(self, image_shape: Sequence[int], channels: Sequence[int]):
        super().__init__()
        self.image_shape = tuple(image_shape)
        layers: list[nn.Module] = []
        fan_in, (height, width) = self.image_shape[0], self.image_shape[1:]
        for fan_out in channels:
            layers += [nn.Conv2d(fan_in, fan_out, KERNEL, STRIDE, PADDING), ReLU()]
            fan_in, height, width = fan_out, halved(height), halved(width)
        self.net = nn.Sequential(*layers)
        self.out_features = fan_in * height * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net(x.reshape(-1, *self.image_shape))   # convolutions take [batch, C, H, W]
        return features.reshape(*x.shape[:-1], self.out_features)


class ConvDecoder(nn.Module):
    """z [..., latent_dim] to [..., C·H·W]: the MLP of ``hidden`` to the smallest feature map, then
    transposed convolutions back up through ``channels`` reversed to the image's C channels (no
    activation after the last: logits, or the Normal's mean)."""

    def __init__(self, latent_dim: int, hidden: Sequence[int], image_shape: Sequence[int], channels: Sequence[int]):
        super().__init__()
        self.image_shape = tuple(image_shape)
        sides = [tuple(self.image_shape[1:])]
        for _ in channels:
            sides.append(tuple(halved(side) for side in sides[-1]))
        self.smallest = (channels[-1], *sides[-1])
        self.project = nn.Sequential(*mlp([latent_dim, *hidden, math.prod(self.smallest)]), ReLU())
        layers: list[nn.Module] = []
        fan_outs = [*reversed(channels[:-1]), self.image_shape[0]]
        fan_in = channels[-1]
        for i, fan_out in enumerate(fan_outs):
            bigger, smaller = sides[-2 - i], sides[-1 - i]
            padding = tuple(big - 2 * small for big, small in zip(bigger, smaller))   # s mod 2: back to size s
            if i > 0:
                layers.append(ReLU())
            layers.append(nn.ConvTranspose2d(fan_in, fan_out, KERNEL, STRIDE, PADDING, output_padding=padding))
            fan_in = fan_out
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.project(z).reshape(-1, *self.smallest)
        return self.net(h).reshape(*z.shape[:-1], math.prod(self.image_shape))


class ConvModel(VAEModel):
    """p(z) p_θ(x | z) with one latent site ``z`` and a transposed-conv decoder; its ``features``
    are the conv layers the guides encode with."""

    cli_help = "z -> x through transposed convolutions, the guides' encoders convolutional (image data)"
    Options = ConvOptions

    def __init__(self, latent_dim: int, image_shape: Sequence[int], *,
                 channels: Sequence[int] = default_of(ConvOptions, "channels"),
                 hidden: Sequence[int] = default_of(ConvOptions, "hidden"),
                 likelihood: str = default_of(ConvOptions, "likelihood"),
                 sigma: str | float = default_of(ConvOptions, "sigma"), init: str = default_of(ConvOptions, "init")):
        """The defaults are :class:`ConvOptions`' (no ``activation``: its conv stacks are ReLU networks)."""
        self.image_shape, self.channels = tuple(int(s) for s in image_shape), tuple(channels)
        super().__init__(latent_dim, math.prod(self.image_shape), hidden=hidden, likelihood=likelihood, sigma=sigma,
                         decoder=ConvDecoder(latent_dim, hidden, self.image_shape, self.channels), init=init)

    @classmethod
    def from_options(cls, options: ConvOptions, data_dim: int, image_shape: tuple[int, ...] | None = None
                     ) -> "ConvModel":
        if image_shape is None:
            raise UsageError(f"{named('model', 'conv')} needs images, but these rows are {data_dim} numbers without "
                             "an image shape; pass image data (an .npz of [N, H, W] or [N, C, H, W] arrays, or "
                             f"MNIST) or use {named('model', 'vae')}")
        height, width = image_shape[1:]
        if min(height, width) < 2 ** len(options.channels):
            raise UsageError(f"{named('channels', ','.join(map(str, options.channels)))} halves {height}x{width} "
                             f"images {len(options.channels)} times, to less than a pixel; pass at most "
                             f"{max(1, int(math.log2(min(height, width))))} conv layers")
        return cls(options.latent_dim, image_shape, **values(options, without=("latent_dim", "activation")))

    def features(self) -> tuple[nn.Module, int]:
        """A new conv stack for a guide's encoder, and its number of features."""
        encoder = initialize(ConvEncoder(self.image_shape, self.channels), self.init)
        return encoder, encoder.out_features
