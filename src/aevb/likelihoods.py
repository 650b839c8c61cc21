"""Observation models p(x|z): raw decoder outputs -> distribution parameters -> log p(x|z).

A decoder backbone emits ``n_params`` raw maps per data element; the likelihood
turns them into named parameters and scores data with them. Backbones never
need to know which likelihood they serve, only how many raw maps it wants.
All log-probabilities are summed over data dimensions: nats per datapoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from aevb.errors import require

LOG_2PI = math.log(2.0 * math.pi)


DATA_DIMS = 3  # every data point is (channels, height, width)


def gaussian_log_density(x: Tensor, mean: Tensor, logvar: Tensor) -> Tensor:
    """Elementwise log N(x; mean, exp(logvar)), nats; callers sum over the dims they need."""
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 * torch.exp(-logvar))


def _sum_data_dims(t: Tensor) -> Tensor:
    """Sum over (C, H, W), keeping any leading sample and batch dims."""
    return t.flatten(start_dim=t.dim() - DATA_DIMS).sum(-1)


class Likelihood:
    """Interface: ``params(raw)`` and ``log_prob(x, params)``."""

    name: str = ""
    n_params: int = 1

    def params(self, raw: Tensor) -> dict[str, Tensor]:  # raw: (..., n_params, *data_shape)
        raise NotImplementedError

    def log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def mean(self, params: dict[str, Tensor]) -> Tensor:
        """E[x|z], used for pictures (samples, manifolds, reconstructions)."""
        raise NotImplementedError

    def sample(self, params: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        """x ~ p(x|z); ``generator``: the stream to draw from (default the global one)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """log p(x|z) = sum_i x_i log y_i + (1-x_i) log(1-y_i), y = sigmoid(logits).

    Accepts intensities in [0, 1] as targets, as the paper's MNIST code does.
    """

    name = "bernoulli"
    n_params = 1

    def params(self, raw: Tensor) -> dict[str, Tensor]:
        return {"logits": raw.select(-4, 0)}

    def log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        logits = params["logits"]
        ll = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none")
        return _sum_data_dims(ll)

    def mean(self, params: dict[str, Tensor]) -> Tensor:
        return torch.sigmoid(params["logits"])

    def sample(self, params: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params["logits"]), generator=generator)


class Gaussian(Likelihood):
    """Diagonal Gaussian with sigmoid-constrained mean and learned log-variance (paper, Section 5)."""

    name = "gaussian"
    n_params = 2

    def params(self, raw: Tensor) -> dict[str, Tensor]:
        return {"mean": torch.sigmoid(raw.select(-4, 0)), "logvar": raw.select(-4, 1)}

    def log_prob(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        return _sum_data_dims(gaussian_log_density(x, params["mean"], params["logvar"]))

    def mean(self, params: dict[str, Tensor]) -> Tensor:
        return params["mean"]

    def sample(self, params: dict[str, Tensor], generator: torch.Generator | None = None) -> Tensor:
        mean = params["mean"]
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        return mean + torch.exp(0.5 * params["logvar"]) * noise


LIKELIHOODS = {cls.name: cls for cls in (Bernoulli, Gaussian)}


def make_likelihood(name: str) -> Likelihood:
    require(name in LIKELIHOODS, f"unknown likelihood '{name}' (choose from: {', '.join(LIKELIHOODS)})")
    return LIKELIHOODS[name]()
