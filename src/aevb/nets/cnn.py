"""A conventional convolutional VAE: strided convs down, transposed convs up, dense layers at the bottleneck.

Spatial sizes are derived from ``data_shape``: every stage halves a side
rounding up (28 -> 14 -> 7, 20 -> 10 -> 5, 7 -> 4), the decoder doubles back
from that size and crops the centre, so any H x W works without hand-edited
sizes. The size helpers here are shared with ``aevb.nets.unet``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn

from aevb.activations import activation as make_activation
from aevb.errors import require, require_positive_int
from aevb.likelihoods import Likelihood
from aevb.nets.base import Decoder, Encoder


def positive_ints(name: str, values) -> tuple[int, ...]:
    """Validate a non-empty list of positive integers from the config (a list or ListConfig)."""
    ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) > 0
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)
    require(ok, f"{name} must be a non-empty list of positive integers, got {values}")
    return tuple(int(v) for v in values)


def halve(size: int, times: int) -> int:
    """Side length after ``times`` stride-2 stages (3x3 kernel, padding 1): ceil(size / 2) each time."""
    for _ in range(times):
        size = (size + 1) // 2
    return size


def bottom_size(data_shape: Sequence[int], n_down: int) -> tuple[int, int]:
    """(h, w) of the feature map after ``n_down`` halvings of data_shape's (H, W)."""
    return halve(data_shape[1], n_down), halve(data_shape[2], n_down)


def center_crop(x: Tensor, height: int, width: int) -> Tensor:
    """Crop (..., H', W') with H' >= height, W' >= width to the centre (..., height, width)."""
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    return x[..., top : top + height, left : left + width]


def to_raw(out: Tensor, data_shape: Sequence[int], n_params: int) -> Tensor:
    """Decoder map (B, n_params * C, H', W') -> cropped (B, n_params, C, H, W), as ``Decoder.raw`` returns."""
    channels, height, width = data_shape
    return center_crop(out, height, width).unflatten(1, (n_params, channels))


class CNNEncoder(Encoder):
    """One stride-2 3x3 conv + ReLU per entry of ``channels``, then a dense layer (``activation``, ReLU by
    default) and linear mean/logvar heads."""

    def __init__(self, data_shape: Sequence[int], latent_dim: int, channels: Sequence[int] = (32, 64), hidden_dim: int = 256,
                 activation: str = "relu"):
        super().__init__(data_shape, latent_dim)
        widths = positive_ints("net.encoder.channels", channels)
        require_positive_int("net.encoder.hidden_dim", hidden_dim)
        layers: list[nn.Module] = []
        prev = self.data_shape[0]
        for width in widths:
            layers += [nn.Conv2d(prev, width, 3, stride=2, padding=1), nn.ReLU()]
            prev = width
        flat = prev * math.prod(bottom_size(self.data_shape, len(widths)))
        dense = make_activation("net.encoder.activation", activation)
        self.features = nn.Sequential(*layers, nn.Flatten(), nn.Linear(flat, hidden_dim), dense)
        self.mean = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        return self.mean(h), self.logvar(h)

    def logvar_head(self):
        return [self.logvar.weight, self.logvar.bias]


class CNNDecoder(Decoder):
    """Mirror of CNNEncoder: dense layers (``activation``, ReLU by default) to the bottom feature map, one
    2x transposed conv + ReLU per
    entry of ``channels`` (widest first), a 3x3 conv to n_params * C maps, centre-cropped to H x W.

    Takes z flattened, so it also serves encoders with a spatial latent of latent_dim elements.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        likelihood: Likelihood,
        channels: Sequence[int] = (32, 64),
        hidden_dim: int = 256,
        activation: str = "relu",
    ):
        super().__init__(data_shape, latent_dim, likelihood)
        widths = positive_ints("net.decoder.channels", channels)
        require_positive_int("net.decoder.hidden_dim", hidden_dim)
        h, w = bottom_size(self.data_shape, len(widths))
        self.stem = nn.Sequential(
            nn.Flatten(),
            nn.Linear(latent_dim, hidden_dim),
            make_activation("net.decoder.activation", activation),
            nn.Linear(hidden_dim, widths[-1] * h * w),
            make_activation("net.decoder.activation", activation),
            nn.Unflatten(1, (widths[-1], h, w)),
        )
        layers: list[nn.Module] = []
        outs = (*widths[::-1][1:], widths[0])  # e.g. (32, 64) -> 64 -> 32 -> 32
        prev = widths[-1]
        for width in outs:
            layers += [nn.ConvTranspose2d(prev, width, 4, stride=2, padding=1), nn.ReLU()]  # exactly doubles H, W
            prev = width
        layers.append(nn.Conv2d(prev, likelihood.n_params * self.data_shape[0], 3, padding=1))
        self.up = nn.Sequential(*layers)

    def output_bias(self):
        return [self.up[-1].bias]  # the final 3x3 conv's, one per output map

    def raw(self, z: Tensor) -> Tensor:
        return to_raw(self.up(self.stem(z)), self.data_shape, self.likelihood.n_params)
