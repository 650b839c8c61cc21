"""The variational lower bound (ELBO) of Kingma & Welling 2013, apart from networks and modules.

Every function returns per-datapoint values in nats, shape (batch,). The
estimators are the paper's two SGVB estimators:

* ``analytic`` (estimator B, eq. 7, Appendix B): -KL(q(z|x) || N(0, I)) in closed
  form plus 1/L sum_l log p(x|z_l). This is what the paper's experiments use.
* ``generic`` (estimator A, eq. 6): 1/L sum_l [log p(x, z_l) - log q(z_l|x)].

Latents may have any shape after the batch dim (vector or C x h x w); KL and
log-densities are summed over all latent elements.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from aevb.errors import require
from aevb.likelihoods import LOG_2PI, Likelihood, gaussian_log_density

ESTIMATORS = ("analytic", "generic")


@dataclass
class ElboTerms:
    """Per-datapoint terms, each of shape (batch,), in nats.

    ``elbo = recon - kl`` always holds (for ``generic`` the KL is its Monte Carlo estimate).
    """

    elbo: Tensor
    recon: Tensor
    kl: Tensor

    def objective(self, beta: float = 1.0) -> Tensor:
        """recon - beta * KL; equals the ELBO for beta = 1 (the paper)."""
        return self.elbo if beta == 1.0 else self.recon - beta * self.kl


def _sum_latent(t: Tensor, batch_dims: int) -> Tensor:
    return t.flatten(start_dim=batch_dims).sum(-1)


def kl_to_standard_normal(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) = -1/2 sum(1 + logvar - mean^2 - exp(logvar)) (Appendix B)."""
    return _sum_latent(-0.5 * (1.0 + logvar - mean**2 - torch.exp(logvar)), 1)


def log_normal(z: Tensor, mean: Tensor, logvar: Tensor, batch_dims: int) -> Tensor:
    """log N(z; mean, diag exp(logvar)), summed over the latent elements."""
    return _sum_latent(gaussian_log_density(z, mean, logvar), batch_dims)


def log_standard_normal(z: Tensor, batch_dims: int) -> Tensor:
    return _sum_latent(-0.5 * (LOG_2PI + z**2), batch_dims)


def reparameterize(mean: Tensor, logvar: Tensor, n_samples: int, eps: Tensor | None = None) -> Tensor:
    """z_l = mean + sigma * eps_l, eps_l ~ N(0, I); returns (n_samples, batch, *latent_shape).

    ``eps`` (that shape): noise drawn by the caller (a packed sweep draws each member's from its own stream).
    """
    if eps is None:
        eps = torch.randn((n_samples, *mean.shape), dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


def decode_samples(decode: Callable[[Tensor], dict[str, Tensor]], z: Tensor) -> dict[str, Tensor]:
    """Decode z of shape (L, B, *latent_shape) in one batch of L * B; parameters come back as (L, B, ...)."""
    params = decode(z.flatten(0, 1))
    return {k: v.unflatten(0, z.shape[:2]) for k, v in params.items()}


def elbo(
    x: Tensor,
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    decode: Callable[[Tensor], dict[str, Tensor]],
    likelihood: Likelihood,
    n_samples: int = 1,
    estimator: str = "analytic",
    eps: Tensor | None = None,
) -> ElboTerms:
    """SGVB estimate of the ELBO of each datapoint in ``x`` (batch, C, H, W).

    ``encode(x)`` returns (mean, logvar) of q(z|x); ``decode(z)`` returns the
    parameters of p(x|z) for z of shape (n_samples * batch, *latent_shape). ``eps``: the
    reparameterisation noise, (n_samples, batch, *latent_shape); None draws it here.
    """
    require(estimator in ESTIMATORS, f"unknown ELBO estimator '{estimator}' (choose from: analytic, generic)")
    require(n_samples >= 1, f"n_samples (L) must be >= 1, got {n_samples}")
    mean, logvar = encode(x)
    z = reparameterize(mean, logvar, n_samples, eps)  # (L, B, ...)
    log_px_z = likelihood.log_prob(x, decode_samples(decode, z))  # (L, B)
    recon = log_px_z.mean(0)
    if estimator == "analytic":
        kl = kl_to_standard_normal(mean, logvar)
    else:
        kl = (log_normal(z, mean, logvar, batch_dims=2) - log_standard_normal(z, batch_dims=2)).mean(0)
    return ElboTerms(elbo=recon - kl, recon=recon, kl=kl)


def weight_penalty(params, n_train: int) -> Tensor:
    """-log N(theta; 0, I) / N_train, up to a constant: the MAP weight prior of the paper, per datapoint."""
    return 0.5 * sum(p.pow(2).sum() for p in params) / n_train
