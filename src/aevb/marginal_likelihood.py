"""Importance-sampled log p(x) with the encoder as proposal (the IWAE bound, Burda et al. 2016).

    log p(x) ~ log 1/k sum_k p(x|z_k) p(z_k) / q(z_k|x),   z_k ~ q(z|x).

It is a lower bound in expectation that rises with k towards log p(x) (k = 1
is the ELBO), so it compares models trained by different methods (AEVB,
wake-sleep) on the quantity the paper's Figure 3 estimates. The modern
protocol uses k = 5000. Values are per datapoint, in nats; they are densities
of the data as given, so a Bernoulli decoder scored on grey-level intensities
(the paper's MNIST) is not comparable to binarised-MNIST literature numbers.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
from torch import Tensor

from aevb.elbo import decode_samples, log_normal, log_standard_normal
from aevb.errors import require, require_positive_int
from aevb.evaluation import eval_mode
from aevb.likelihoods import Likelihood


def _draw_eps(shape: torch.Size, n: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    # One RNG call per importance sample, so the random stream (and hence the answer) does not
    # depend on chunk_size: sample j gets the same noise however the k samples are grouped.
    return torch.stack(
        [torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device) for _ in range(n)]
    )


def importance_weighted_log_likelihood(
    x: Tensor,
    encode: Callable[[Tensor], tuple[Tensor, Tensor]],
    decode: Callable[[Tensor], dict[str, Tensor]],
    likelihood: Likelihood,
    k: int = 5000,
    chunk_size: int = 100,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Estimate of log p(x) for each datapoint of ``x``; shape (batch,), nats.

    ``encode``/``decode``/``likelihood`` are as in :func:`aevb.elbo.elbo`. The k samples
    are drawn and decoded ``chunk_size`` at a time and folded into a running
    logsumexp, so memory is O(chunk_size * batch) whatever k is.
    """
    require_positive_int("k (importance samples)", k)
    require_positive_int("chunk_size", chunk_size)
    mean, logvar = encode(x)
    std = torch.exp(0.5 * logvar)
    batch = x.shape[0]
    running = torch.full((batch,), -math.inf, dtype=torch.float64, device=x.device)
    done = 0
    while done < k:
        n = min(chunk_size, k - done)
        z = mean + std * _draw_eps(mean.shape, n, mean, generator)  # (n, B, ...)
        log_w = (
            likelihood.log_prob(x, decode_samples(decode, z))
            + log_standard_normal(z, batch_dims=2)
            - log_normal(z, mean, logvar, batch_dims=2)
        )  # (n, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w.double(), dim=0))
        done += n
    return (running - math.log(k)).to(mean.dtype)


@torch.no_grad()
def evaluate_log_likelihood(
    model,
    loader: Iterable,
    k: int = 5000,
    chunk_size: int = 100,
    device: str | torch.device = "cpu",
    seed: int | None = 0,
) -> tuple[float, int]:
    """Mean importance-sampled log p(x) over ``loader`` (nats per datapoint) and the number of datapoints.

    ``model`` is a VAEModuleBase (``.encoder``, ``.decoder``, ``.likelihood``); it is
    evaluated in eval mode and left in the mode it came in. ``seed`` fixes the
    proposal samples so that two models can be compared on the same noise.
    """
    device = torch.device(device)
    model.to(device)
    generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    total = torch.zeros((), dtype=torch.float64, device=device)
    n = 0
    with eval_mode(model):
        for batch in loader:
            x = batch[0] if isinstance(batch, (list, tuple)) else batch
            x = x.to(device)
            log_px = importance_weighted_log_likelihood(
                x, model.encoder, model.decoder, model.likelihood, k=k, chunk_size=chunk_size, generator=generator
            )
            total += log_px.double().sum()
            n += x.shape[0]
    require(n > 0, "evaluate_log_likelihood: the loader yielded no datapoints")
    return float(total / n), n
