"""The objective: analytic KL, hand-computed ELBO, likelihoods vs torch.distributions, the exact loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch import distributions as D

from aevb.elbo import elbo, kl_to_standard_normal, log_normal, log_standard_normal
from aevb.likelihoods import Bernoulli, Gaussian, make_likelihood
from aevb.errors import ConfigError
from helpers import compose


def test_analytic_kl_matches_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mean = torch.randn(4, 6, generator=g, dtype=torch.float64)
    logvar = torch.randn(4, 6, generator=g, dtype=torch.float64) * 0.5
    analytic = kl_to_standard_normal(mean, logvar)
    n = 400_000
    z = mean + torch.exp(0.5 * logvar) * torch.randn(n, 4, 6, generator=g, dtype=torch.float64)
    samples = log_normal(z, mean, logvar, batch_dims=2) - log_standard_normal(z, batch_dims=2)
    mc, stderr = samples.mean(0), samples.std(0) / math.sqrt(n)
    assert torch.all((mc - analytic).abs() < 4 * stderr), (mc, analytic, stderr)
    # and against torch.distributions' closed form
    ref = D.kl_divergence(D.Normal(mean, torch.exp(0.5 * logvar)), D.Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(analytic, ref)


def test_elbo_of_tiny_fixed_model_equals_hand_computation():
    """Two pixels, one latent, fixed numbers: the ELBO (estimator B, L = 1) worked out with plain math."""
    x = torch.tensor([[[[1.0, 0.0]]], [[[0.3, 0.8]]]])  # (B=2, C=1, H=1, W=2)
    mu, lv = [0.5, -1.0], [-0.2, 0.4]
    w, b = [1.5, -2.0], [0.1, 0.3]

    def encode(x):
        return torch.tensor(mu).unsqueeze(1), torch.tensor(lv).unsqueeze(1)

    def decode(z):  # z: (L*B, 1) -> logits (L*B, 1, 1, 2)
        return {"logits": (z * torch.tensor(w) + torch.tensor(b)).reshape(-1, 1, 1, 2)}

    torch.manual_seed(123)
    terms = elbo(x, encode, decode, Bernoulli(), n_samples=1, estimator="analytic")
    torch.manual_seed(123)
    eps = torch.randn(1, 2, 1)[0, :, 0].tolist()

    for i in range(2):
        z = mu[i] + math.exp(0.5 * lv[i]) * eps[i]
        recon = 0.0
        for j in range(2):
            y = 1.0 / (1.0 + math.exp(-(w[j] * z + b[j])))
            xi = float(x[i, 0, 0, j])
            recon += xi * math.log(y) + (1 - xi) * math.log(1 - y)
        kl = -0.5 * (1 + lv[i] - mu[i] ** 2 - math.exp(lv[i]))
        assert terms.recon[i].item() == pytest.approx(recon, abs=1e-5)
        assert terms.kl[i].item() == pytest.approx(kl, abs=1e-6)
        assert terms.elbo[i].item() == pytest.approx(recon - kl, abs=1e-5)


def test_generic_and_analytic_estimators_agree_in_expectation():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 2, 2)
    mean, logvar = torch.randn(3, 2), torch.randn(3, 2) * 0.3
    weight = torch.randn(2, 4)

    def encode(x):
        return mean, logvar

    def decode(z):
        return {"logits": (z @ weight).reshape(-1, 1, 2, 2)}

    a = elbo(x, encode, decode, Bernoulli(), n_samples=50_000, estimator="analytic")
    g = elbo(x, encode, decode, Bernoulli(), n_samples=50_000, estimator="generic")
    torch.testing.assert_close(a.elbo, g.elbo, atol=0.05, rtol=0)
    torch.testing.assert_close(a.kl, g.kl, atol=0.05, rtol=0)


def test_bernoulli_log_prob_matches_torch_distributions():
    torch.manual_seed(1)
    raw = torch.randn(5, 1, 1, 4, 3)  # (B, n_params=1, C, H, W)
    lik = Bernoulli()
    params = lik.params(raw)
    for x in (torch.bernoulli(torch.full((5, 1, 4, 3), 0.4)), torch.rand(5, 1, 4, 3)):  # binary and intensities
        ref = D.Bernoulli(logits=params["logits"], validate_args=False).log_prob(x).sum((1, 2, 3))
        torch.testing.assert_close(lik.log_prob(x, params), ref)


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(2)
    raw = torch.randn(5, 2, 1, 4, 3)
    lik = Gaussian()
    params = lik.params(raw)
    torch.testing.assert_close(params["mean"], torch.sigmoid(raw[:, 0]))
    x = torch.rand(5, 1, 4, 3)
    ref = D.Normal(torch.sigmoid(raw[:, 0]), torch.exp(0.5 * raw[:, 1])).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(lik.log_prob(x, params), ref)
    # with a leading sample dim, x broadcasts
    params2 = lik.params(raw.unsqueeze(0).expand(3, -1, -1, -1, -1, -1))
    assert lik.log_prob(x, params2).shape == (3, 5)


def test_unknown_likelihood_and_estimator_are_config_errors():
    with pytest.raises(ConfigError, match="unknown likelihood 'poisson'"):
        make_likelihood("poisson")
    with pytest.raises(ConfigError, match="unknown ELBO estimator"):
        elbo(torch.rand(1, 1, 1, 1), None, None, Bernoulli(), estimator="iwae")


def test_training_loss_is_exactly_minus_elbo_plus_weight_prior(mnist):
    """No hidden weights: loss = -mean ELBO + 0.5 ||theta||^2 / N_train; beta only scales the KL."""
    from aevb.building import build

    x = mnist.splits["train"][:50]
    for beta in (1.0, 2.0):
        cfg = compose(["model.latent_dim=3", "net.encoder.hidden_dim=16", "net.decoder.hidden_dim=16",
                       f"model.beta={beta}", f"data.mirror={mnist.mirror}"])
        _, model = build(cfg, data_module=mnist)
        torch.manual_seed(7)
        loss = model.training_step(x, 0)
        torch.manual_seed(7)
        terms = model.elbo_terms(x)
        prior = 0.5 * sum(float((p.double() ** 2).sum()) for p in model.parameters()) / mnist.n_train
        expected = -(terms.recon - beta * terms.kl).mean().item() + prior
        assert loss.item() == pytest.approx(expected, rel=1e-6)
        assert model.samples_seen == 50
