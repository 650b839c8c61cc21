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
    # True where a member of a packed sweep (aevb.packed) may share a program with larger latents by
    # zero-padding: every parameter's latent-sized dimension is its own, padded at its end (separate
    # mean and log-variance layers, not one layer with both halves)
    latent_padding_exact = False

    def __init__(self, data_shape: Sequence[int], latent_dim: int):
        super().__init__()
        self.data_shape = _check_shape(data_shape, latent_dim)
        self.latent_dim = latent_dim

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return (self.latent_dim,)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def logvar_head(self) -> list[Tensor]:
        """The weights and bias of the layer that outputs log sigma^2 of q(z|x), as views of the parameters.

        A view, not a whole parameter, where one layer outputs mean and log-variance together (the
        U-Net's ``heads``: the second half of its output units/channels). ``init=authors_2014|fan_in``
        set these to 0, so q starts with unit variance.
        """
        raise NotImplementedError(f"{type(self).__name__} does not name its log-variance head")


class Decoder(nn.Module):
    latent_padding_exact = False  # as Encoder's: z enters only through layers whose input columns pad at the end

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

    def output_bias(self) -> list[Tensor]:
        """The bias(es) added last to ``raw(z)``: every likelihood parameter of every pixel has one.

        ``init=authors_2014|fan_in`` set them to 0 (the authors' ``b_out``), so the decoder starts at
        mean 0.5 (Bernoulli logits 0, Gaussian sigmoid(0)) and, for a Gaussian, log-variance 0.
        """
        raise NotImplementedError(f"{type(self).__name__} does not name its output bias")


INITS = ("paper", "authors_2014", "fan_in")


def init_normal_(module: nn.Module, std: float) -> None:
    """Draw every parameter from N(0, std^2): the paper's initialisation (std 0.01)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0.0, std)


def fan_in(weight: Tensor) -> int:
    """Inputs per output unit, torch's convention: size(1) * kernel size (in_features for Linear)."""
    return nn.init._calculate_fan_in_and_fan_out(weight)[0]


def initialise_(encoder: Encoder, decoder: Decoder, scheme: str, std: float) -> None:
    """The named initialisations (``model.init``); ``std`` is ``model.init_std``.

    * ``paper``: every parameter N(0, std^2) (the paper's text, std 0.01).
    * ``authors_2014``: the same, then the encoder's log-variance head and the decoder's output
      bias at 0 (the authors' code, mid-2014).
    * ``fan_in``: weight tensors (2+ dims) N(0, 1/fan_in), the same two sets at 0, every other
      (vector) parameter N(0, std^2) (the authors' code from August 2014 on).
    """
    require(scheme in INITS, f"model.init must be one of {', '.join(INITS)}, got '{scheme}'")
    with torch.no_grad():
        for net in (encoder, decoder):
            for p in net.parameters():
                p.normal_(0.0, fan_in(p) ** -0.5 if scheme == "fan_in" and p.dim() >= 2 else std)
        if scheme != "paper":
            for t in (*encoder.logvar_head(), *decoder.output_bias()):
                t.zero_()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
