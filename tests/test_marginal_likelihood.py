"""The importance-sampled log p(x) against probabilistic PCA, whose marginal likelihood is closed-form.

pPCA: z ~ N(0, I_d), x|z ~ N(Wz + b, sigma^2 I_D), so log p(x) = log N(x; b, WW^T + sigma^2 I).
With W = Q diag(s) (orthonormal Q) the exact posterior is diagonal,
N(s / (s^2 + sigma^2) * Q^T (x - b), sigma^2 / (s^2 + sigma^2)), i.e. an encoder of
the form the package uses. Everything runs in float64 with seeded generators.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from aevb.elbo import kl_to_standard_normal
from aevb.likelihoods import Bernoulli, Likelihood
from aevb.marginal_likelihood import evaluate_log_likelihood, importance_weighted_log_likelihood
from aevb.models.aevb import AEVB
from aevb.nets.mlp import MLPDecoder, MLPEncoder

F64 = torch.float64
D, LATENT, SIGMA = 8, 2, 0.5
SCALES = torch.tensor([2.0, 1.0], dtype=F64)


class IdentityMeanGaussian(Likelihood):
    """N(x; mean, SIGMA^2 I) with the mean used as is (aevb's Gaussian squashes it with a sigmoid)."""

    name = "ppca"

    def log_prob(self, x, params):
        mean = params["mean"]
        ll = -0.5 * (math.log(2 * math.pi) + 2 * math.log(SIGMA) + (x - mean) ** 2 / SIGMA**2)
        return ll.flatten(-3).sum(-1)


class PPCA:
    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        q, _ = torch.linalg.qr(torch.randn(D, LATENT, generator=g, dtype=F64))
        self.q, self.w = q, q * SCALES
        self.b = torch.randn(D, generator=g, dtype=F64)
        self.likelihood = IdentityMeanGaussian()
        self.post_var = SIGMA**2 / (SCALES**2 + SIGMA**2)

    def sample(self, n: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, LATENT, generator=g, dtype=F64)
        x = z @ self.w.T + self.b + SIGMA * torch.randn(n, D, generator=g, dtype=F64)
        return x.view(n, 1, 1, D)  # the package's (C, H, W) data layout

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mean": (z @ self.w.T + self.b).view(z.shape[0], 1, 1, D)}

    def posterior(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = ((x.flatten(1) - self.b) @ self.q) * SCALES / (SCALES**2 + SIGMA**2)
        return mean, self.post_var.log().expand(x.shape[0], LATENT)

    def proposal(self, shift: float, inflate: float):
        """The exact posterior with its mean moved by ``shift`` posterior s.d. and its variance times ``inflate``."""

        def encode(x):
            mean, logvar = self.posterior(x)
            return mean + shift * self.post_var.sqrt(), logvar + math.log(inflate)

        return encode

    def exact_log_px(self, x: torch.Tensor) -> torch.Tensor:
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(D, dtype=F64)
        return torch.distributions.MultivariateNormal(self.b, cov).log_prob(x.flatten(1))

    def exact_elbo(self, x: torch.Tensor, encode) -> torch.Tensor:
        """E_q[log p(x|z)] - KL(q || N(0, I)) in closed form for a diagonal Gaussian q."""
        mean, logvar = encode(x)
        recon = self.likelihood.log_prob(x, self.decode(mean)) - 0.5 * (logvar.exp() * SCALES**2).sum(-1) / SIGMA**2
        return recon - kl_to_standard_normal(mean, logvar)


@pytest.fixture(scope="module")
def ppca():
    return PPCA()


def estimate(ppca, x, encode, k, chunk_size=500, seed=1):
    return importance_weighted_log_likelihood(
        x, encode, ppca.decode, ppca.likelihood, k=k, chunk_size=chunk_size, generator=torch.Generator().manual_seed(seed)
    )


EXACT_PROPOSAL_ATOL = 1e-4  # every importance weight equals p(x): only float64 rounding remains (seen ~1e-14)


@pytest.mark.parametrize("k,chunk_size", [(1, 1), (7, 3), (100, 100), (250, 64)])
def test_exact_posterior_gives_exact_log_likelihood(ppca, k, chunk_size):
    x = ppca.sample(64, seed=2)
    est = estimate(ppca, x, ppca.posterior, k, chunk_size)
    assert est.shape == (64,) and est.dtype == F64
    torch.testing.assert_close(est, ppca.exact_log_px(x), atol=EXACT_PROPOSAL_ATOL, rtol=0)


def test_elbo_of_exact_posterior_is_exact(ppca):
    """Checks the test's own closed forms: with q = p(z|x) the ELBO is log p(x)."""
    x = ppca.sample(16, seed=3)
    torch.testing.assert_close(ppca.exact_elbo(x, ppca.posterior), ppca.exact_log_px(x), atol=1e-10, rtol=0)


# Imperfect proposal: mean off by 0.5 posterior s.d., variance doubled. Its ELBO is ~0.56 nats below log p(x).
# At k = 5000 the per-datapoint estimate has s.d. ~0.011 nats (measured), so over 200 datapoints the largest
# error is ~3 s.d. = 0.033: a 0.05-nat tolerance is ~4.7 s.d.; the mean error (s.d. ~0.0008) must be < 0.005.
K5000_POINT_TOL = 0.05
K5000_MEAN_TOL = 0.005


def test_k5000_with_imperfect_proposal_is_close_to_exact(ppca):
    x = ppca.sample(200, seed=4)
    encode = ppca.proposal(0.5, 2.0)
    exact = ppca.exact_log_px(x)
    est = estimate(ppca, x, encode, k=5000, chunk_size=500)
    err = est - exact
    assert err.abs().max() < K5000_POINT_TOL, f"max |error| {err.abs().max():.4f} nats"
    assert err.mean().abs() < K5000_MEAN_TOL, f"mean error {err.mean():.4f} nats"
    elbo = ppca.exact_elbo(x, encode)
    assert (exact - elbo).mean() > 0.5, "the proposal must be imperfect for this test to mean anything"
    assert est.mean() > elbo.mean() + 0.5


def test_k1_is_an_unbiased_elbo_estimate(ppca):
    """E[k = 1 estimate] = ELBO; over 2000 datapoints the mean's s.d. is ~0.03 nats (measured): allow 4 s.d."""
    x = ppca.sample(2000, seed=5)
    encode = ppca.proposal(0.5, 2.0)
    k1 = estimate(ppca, x, encode, k=1)
    elbo = ppca.exact_elbo(x, encode)
    sd_of_mean = float((k1 - elbo).std()) / math.sqrt(len(x))
    assert abs(float((k1 - elbo).mean())) < 4 * sd_of_mean, (float((k1 - elbo).mean()), sd_of_mean)
    assert 4 * sd_of_mean < 0.2


# A poorer proposal (mean off by 1.5 posterior s.d.) so the bound is far from tight at every k tried;
# measured mean gains over 2000 datapoints: 1->10 ~1.6, 10->100 ~0.49, 100->1000 ~0.13 nats, with
# s.d. of each gain 0.048, 0.023, 0.011. Requiring each gain > 0.05 nats is > 7 s.d. below expectation
# and > 4 s.d. above zero.
MONOTONE_MIN_GAIN = 0.05


def test_estimate_rises_with_k(ppca):
    x = ppca.sample(2000, seed=6)
    encode = ppca.proposal(1.5, 1.0)
    means = {k: float(estimate(ppca, x, encode, k=k).mean()) for k in (1, 10, 100, 1000)}
    exact = float(ppca.exact_log_px(x).mean())
    elbo = float(ppca.exact_elbo(x, encode).mean())
    ks = sorted(means)
    for small, large in zip(ks, ks[1:]):
        assert means[large] - means[small] > MONOTONE_MIN_GAIN, means
    assert means[1000] < exact + 0.05 and means[1] < exact - 1.0, (means, exact)
    assert abs(means[1] - elbo) < 0.2, (means[1], elbo)


def test_chunking_does_not_change_the_answer(ppca):
    """Sample j gets the same noise however the k samples are chunked, so results agree to rounding."""
    x = ppca.sample(32, seed=7)
    encode = ppca.proposal(1.0, 1.5)
    ref = estimate(ppca, x, encode, k=300, chunk_size=300)
    for chunk_size in (1, 7, 64, 1000):
        torch.testing.assert_close(estimate(ppca, x, encode, k=300, chunk_size=chunk_size), ref, atol=1e-10, rtol=0)
    other_seed = estimate(ppca, x, encode, k=300, seed=99)
    assert not torch.equal(other_seed, ref), "the generator must drive the samples"


def test_rejects_bad_arguments(ppca):
    from aevb.errors import ConfigError

    x = ppca.sample(2, seed=8)
    with pytest.raises(ConfigError):
        estimate(ppca, x, ppca.posterior, k=0)
    with pytest.raises(ConfigError):
        estimate(ppca, x, ppca.posterior, k=5, chunk_size=0)


class _PPCAModule(nn.Module):
    """What evaluate_log_likelihood needs of a VAEModuleBase: .encoder, .decoder, .likelihood."""

    def __init__(self, ppca):
        super().__init__()
        self.encoder = _Fn(ppca.posterior)
        self.decoder = _Fn(ppca.decode)
        self.likelihood = ppca.likelihood


class _Fn(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x)


def test_evaluate_log_likelihood_averages_over_the_loader(ppca):
    x = ppca.sample(130, seed=9)
    loader = DataLoader(TensorDataset(x), batch_size=50)  # yields [x] lists; last batch is short
    model = _PPCAModule(ppca).train()
    mean, n = evaluate_log_likelihood(model, loader, k=5, chunk_size=2, device="cpu")
    assert n == 130 and model.training, "counts every datapoint and leaves the mode as it was"
    assert abs(mean - float(ppca.exact_log_px(x).mean())) < EXACT_PROPOSAL_ATOL


def test_evaluate_log_likelihood_on_a_vae_module():
    """Runs on a real module; the IWAE estimate (k = 50) is above the module's own ELBO on the same data."""
    torch.manual_seed(0)
    shape = (1, 6, 6)
    enc, dec = MLPEncoder(shape, 2, hidden_dim=16), MLPDecoder(shape, 2, Bernoulli(), hidden_dim=16)
    model = AEVB(enc, dec, functools.partial(torch.optim.Adagrad, lr=0.02), latent_dim=2, n_train=100, init_std=None)
    x = torch.bernoulli(torch.full((200, *shape), 0.3), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(x, batch_size=64)
    mean, n = evaluate_log_likelihood(model, loader, k=50, chunk_size=16, device="cpu", seed=0)
    assert n == 200 and math.isfinite(mean) and model.training
    with torch.no_grad():
        elbo = float(model.elbo_terms(x).elbo.mean())
    again, _ = evaluate_log_likelihood(model, loader, k=50, chunk_size=50, device="cpu", seed=0)
    assert mean > elbo
    assert abs(again - mean) < 1e-4, "same seed, different chunking: same estimate"
