"""The one interface every backbone obeys.

* ``Encoder(data_shape, latent_dim, ...)``: ``forward(x)`` with x of shape
  (B, C, H, W) returns ``(mean, logvar)`` of the diagonal Gaussian q(z|x),
  each of shape (B, *latent_shape).
* ``Decoder(data_shape, latent_dim, likelihood, ...)``: ``forward(z)`` returns
  the parameters of p(x|z) as a dict (e.g. ``{"logits": ...}`` or
  ``{"mean": ..., "logvar": ...}``). A backbone implements only ``raw(z)``,
  returning (B, likelihood.n_params, C, H, W); the likelihood maps that to
  its parameters, so any backbone serves any likelihood.

Shapes come from the data module, never from hand-edited sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from aevb.errors import require, require_positive_int
from aevb.likelihoods import Likelihood


def _check_shape(data_shape: Sequence[int], latent_dim: int) -> tuple[int, int, int]:
    """The one place latent_dim is validated: every encoder and decoder passes through here."""
    shape = tuple(int(s) for s in data_shape)
    require(len(shape) == 3 and all(s > 0 for s in shape), f"data_shape must be (C, H, W) > 0, got {shape}")
    require_positive_int("model.latent_dim", latent_dim)
    return shape  # type: ignore[return-value]


class Encoder(nn.Module):
    def __init__(self, data_shape: Sequence[int], latent_dim: int):
        super().__init__()
        self.data_shape = _check_shape(data_shape, latent_dim)
        self.latent_dim = latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class Decoder(nn.Module):
    def __init__(self, data_shape: Sequence[int], latent_dim: int, likelihood: Likelihood):
        super().__init__()
        self.data_shape = _check_shape(data_shape, latent_dim)
        self.latent_dim = latent_dim
        self.likelihood = likelihood

    def raw(self, z: Tensor) -> Tensor:
        """(B, *latent_shape) -> (B, likelihood.n_params, C, H, W)."""
        raise NotImplementedError

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        return self.likelihood.params(self.raw(z))


def init_normal_(module: nn.Module, std: float) -> None:
    """Draw every parameter from N(0, std^2): the paper's initialisation (std 0.01)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
