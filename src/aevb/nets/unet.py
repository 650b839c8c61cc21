"""The two halves of a U-Net, as in the Stable Diffusion autoencoder (Rombach et al. 2022).

Encoder: 3x3 conv in; per level of ``channels``, ``num_res_blocks`` residual
blocks (GroupNorm + SiLU + 3x3 conv, twice) and a stride-2 conv except at the
last level; a middle block (residual, single-head self-attention over spatial
positions, residual); GroupNorm + SiLU. The decoder mirrors it with
nearest-neighbour 2x upsampling + 3x3 conv. There are deliberately no
encoder-to-decoder skip connections: the decoder must generate from z alone.

Latent: a vector by default (flatten + linear heads; the decoder maps z
linearly to the bottom feature map). With ``spatial_latent=True`` it is a
``latent_channels x h x w`` map, (h, w) being the bottom feature map's size
(e.g. 7 x 7 for MNIST and 7 x 5 for Frey Face with three levels).
``latent_dim`` always counts the latent *numbers* (the Gaussians the KL sums
over, the paper's N_z), so it must equal latent_channels * h * w; the
constructors say which value to set otherwise. Because of that, the decoder
accepts z either as (B, latent_dim) or as (B, latent_channels, h, w), and any
vector-latent decoder (which flattens z) can follow a spatial encoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from aevb.errors import require, require_positive_int
from aevb.likelihoods import Likelihood
from aevb.nets.base import Decoder, Encoder
from aevb.nets.cnn import bottom_size, positive_ints, to_raw


def _norm(groups: int, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), with a 1x1 conv on the shortcut when widths differ."""

    def __init__(self, c_in: int, c_out: int, groups: int):
        super().__init__()
        self.body = nn.Sequential(
            _norm(groups, c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(groups, c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
        )
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class SelfAttention(nn.Module):
    """Single-head self-attention over the h*w positions of a feature map, residual."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm = _norm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).flatten(2).transpose(1, 2).chunk(3, dim=-1)  # each (B, h*w, C)
        a = F.scaled_dot_product_attention(q, k, v)
        return x + self.out(a.transpose(1, 2).reshape(b, c, h, w))


def middle(channels: int, groups: int) -> nn.Sequential:
    return nn.Sequential(ResBlock(channels, channels, groups), SelfAttention(channels, groups), ResBlock(channels, channels, groups))


class Upsample(nn.Module):
    """Nearest-neighbour 2x, then a 3x3 conv (SD's choice over transposed convs)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _validate(side: str, channels, num_res_blocks: int, norm_groups: int, spatial_latent, latent_channels: int) -> tuple[int, ...]:
    widths = positive_ints(f"net.{side}.channels", channels)
    require_positive_int(f"net.{side}.num_res_blocks", num_res_blocks)  # >= 1: the res blocks change width
    require_positive_int(f"net.{side}.norm_groups", norm_groups)
    require(all(w % norm_groups == 0 for w in widths),
            f"net.{side}.channels must all be divisible by net.{side}.norm_groups ({norm_groups}) for GroupNorm, got {list(widths)}")
    require(isinstance(spatial_latent, bool), f"net.{side}.spatial_latent must be true or false, got {spatial_latent}")
    require_positive_int(f"net.{side}.latent_channels", latent_channels)
    return widths


def _spatial_latent_shape(side: str, data_shape, n_down: int, latent_dim: int, latent_channels: int) -> tuple[int, int, int]:
    """(latent_channels, h, w), after checking latent_dim counts exactly its elements."""
    shape = (latent_channels, *bottom_size(data_shape, n_down))
    n = math.prod(shape)
    require(latent_dim == n,
            f"net.{side}.spatial_latent=true makes a {'x'.join(map(str, shape))} latent for data {tuple(data_shape)}:"
            f" set model.latent_dim={n} (latent_dim counts latent elements) or change net.{side}.latent_channels"
            f" or net.{side}.channels, got model.latent_dim={latent_dim}")
    return shape  # type: ignore[return-value]


class UNetEncoder(Encoder):
    """SD-style encoder: len(channels) levels, len(channels) - 1 downsamplings, attention in the middle."""

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
        spatial_latent: bool = False,
        latent_channels: int = 4,
    ):
        super().__init__(data_shape, latent_dim)
        widths = _validate("encoder", channels, num_res_blocks, norm_groups, spatial_latent, latent_channels)
        n_down = len(widths) - 1
        layers: list[nn.Module] = [nn.Conv2d(self.data_shape[0], widths[0], 3, padding=1)]
        prev = widths[0]
        for level, width in enumerate(widths):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(prev, width, norm_groups))
                prev = width
            if level < n_down:
                layers.append(nn.Conv2d(prev, prev, 3, stride=2, padding=1))  # ceil(size / 2), see cnn.halve
        layers += [middle(prev, norm_groups), _norm(norm_groups, prev), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.spatial = spatial_latent
        if self.spatial:
            self._latent_shape = _spatial_latent_shape("encoder", self.data_shape, n_down, latent_dim, latent_channels)
            self.heads = nn.Conv2d(prev, 2 * latent_channels, 3, padding=1)
        else:
            self._latent_shape = (latent_dim,)
            flat = prev * math.prod(bottom_size(self.data_shape, n_down))
            self.heads = nn.Sequential(nn.Flatten(), nn.Linear(flat, 2 * latent_dim))

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return self._latent_shape

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.heads(self.features(x)).chunk(2, dim=1)
        return mean, logvar

    def logvar_head(self):
        """The second half of ``heads``' output units (vector latent) or channels (spatial): what chunk(2) calls logvar."""
        layer = self.heads if self.spatial else self.heads[-1]
        half = layer.out_channels // 2 if self.spatial else layer.out_features // 2
        return [layer.weight[half:], layer.bias[half:]]


class UNetDecoder(Decoder):
    """SD-style decoder from z alone: bottom map, middle block, upsampling levels, 3x3 conv out, centre crop."""

    def __init__(
        self,
        data_shape: Sequence[int],
        latent_dim: int,
        likelihood: Likelihood,
        channels: Sequence[int] = (32, 64, 128),
        num_res_blocks: int = 1,
        norm_groups: int = 8,
        spatial_latent: bool = False,
        latent_channels: int = 4,
    ):
        super().__init__(data_shape, latent_dim, likelihood)
        widths = _validate("decoder", channels, num_res_blocks, norm_groups, spatial_latent, latent_channels)
        n_down = len(widths) - 1
        bottom = widths[-1]
        if spatial_latent:
            self.z_shape = _spatial_latent_shape("decoder", self.data_shape, n_down, latent_dim, latent_channels)
            self.stem = nn.Conv2d(latent_channels, bottom, 3, padding=1)
        else:
            self.z_shape = (bottom, *bottom_size(self.data_shape, n_down))
            self.stem = nn.Linear(latent_dim, math.prod(self.z_shape))
        self.spatial = spatial_latent
        layers: list[nn.Module] = [middle(bottom, norm_groups)]
        prev = bottom
        for level in reversed(range(len(widths))):
            for _ in range(num_res_blocks):
                layers.append(ResBlock(prev, widths[level], norm_groups))
                prev = widths[level]
            if level > 0:
                layers.append(Upsample(prev))
        layers += [_norm(norm_groups, prev), nn.SiLU(), nn.Conv2d(prev, likelihood.n_params * self.data_shape[0], 3, padding=1)]
        self.body = nn.Sequential(*layers)

    def output_bias(self):
        return [self.body[-1].bias]  # the final 3x3 conv's, one per output map

    def raw(self, z: Tensor) -> Tensor:
        b = z.shape[0]
        if self.spatial:
            h = self.stem(z.reshape(b, *self.z_shape))
        else:
            h = self.stem(z.reshape(b, -1)).reshape(b, *self.z_shape)
        return to_raw(self.body(h), self.data_shape, self.likelihood.n_params)
