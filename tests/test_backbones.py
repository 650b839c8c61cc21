"""Every backbone (MLP, CNN, U-Net with vector or spatial latent) on both data shapes:
shapes, gradient flow, that a few steps of training raise the ELBO on real data, and
that encoders and decoders mix freely, directly and through Hydra composition.

Widths are tiny so the whole file runs on two CPU cores in well under a minute.
"""

from __future__ import annotations

import math

import pytest
import torch

from aevb.elbo import elbo
from aevb.errors import ConfigError
from aevb.likelihoods import Bernoulli, Gaussian
from aevb.nets.cnn import CNNDecoder, CNNEncoder, bottom_size
from aevb.nets.mlp import MLPDecoder, MLPEncoder
from aevb.nets.unet import UNetDecoder, UNetEncoder
from helpers import compose

SHAPES = {"mnist": ((1, 28, 28), Bernoulli), "frey": ((1, 28, 20), Gaussian)}
BACKBONES = ("mlp", "cnn", "unet", "unet_spatial")
LATENT = 4
UNET_SMALL = dict(channels=(8, 16, 16), num_res_blocks=1, norm_groups=4)
LATENT_CHANNELS = 2
# hydra overrides that shrink each backbone (both sides) for the composition tests
SMALL_OVERRIDES = {
    "mlp": ["net.{side}.hidden_dim=16"],
    "cnn": ["net.{side}.channels=[4,8]", "net.{side}.hidden_dim=16"],
    "unet": ["net.{side}.channels=[4,8]", "net.{side}.norm_groups=4"],
}


def spatial_latent_dim(shape, n_levels: int = len(UNET_SMALL["channels"])) -> int:
    return LATENT_CHANNELS * math.prod(bottom_size(shape, n_levels - 1))


def make(backbone: str, shape, likelihood):
    """(encoder, decoder) with small widths; the spatial U-Net's latent_dim is latent_channels * h * w."""
    if backbone == "mlp":
        return MLPEncoder(shape, LATENT, hidden_dim=32), MLPDecoder(shape, LATENT, likelihood, hidden_dim=32)
    if backbone == "cnn":
        kw = dict(channels=(8, 16), hidden_dim=32)
        return CNNEncoder(shape, LATENT, **kw), CNNDecoder(shape, LATENT, likelihood, **kw)
    spatial = backbone == "unet_spatial"
    n = spatial_latent_dim(shape) if spatial else LATENT
    kw = dict(UNET_SMALL, spatial_latent=spatial, latent_channels=LATENT_CHANNELS)
    return UNetEncoder(shape, n, **kw), UNetDecoder(shape, n, likelihood, **kw)


CASES = [pytest.param(b, d, id=f"{b}-{d}") for b in BACKBONES for d in SHAPES]


@pytest.mark.parametrize("backbone,dataset", CASES)
def test_output_shapes(backbone, dataset):
    shape, lik_cls = SHAPES[dataset]
    lik = lik_cls()
    torch.manual_seed(0)
    enc, dec = make(backbone, shape, lik)
    h, w = bottom_size(shape, 2)
    expected_latent = (LATENT_CHANNELS, h, w) if backbone == "unet_spatial" else (LATENT,)
    assert enc.latent_shape == expected_latent
    assert math.prod(enc.latent_shape) == enc.latent_dim

    x = torch.rand(5, *shape)
    mean, logvar = enc(x)
    assert mean.shape == logvar.shape == (5, *expected_latent)
    assert dec.raw(mean).shape == (5, lik.n_params, *shape)
    params = dec(torch.randn(7, *enc.latent_shape))
    assert set(params) == ({"logits"} if lik_cls is Bernoulli else {"mean", "logvar"})
    for value in params.values():
        assert value.shape == (7, *shape) and torch.isfinite(value).all()
    # a flat z of latent_dim numbers is accepted too (so vector encoders feed spatial decoders)
    assert dec.raw(torch.randn(3, enc.latent_dim)).shape == (3, lik.n_params, *shape)


@pytest.mark.parametrize("backbone,dataset", CASES)
def test_gradients_reach_every_parameter(backbone, dataset):
    shape, lik_cls = SHAPES[dataset]
    lik = lik_cls()
    torch.manual_seed(0)
    enc, dec = make(backbone, shape, lik)
    loss = -elbo(torch.rand(6, *shape), enc, dec, lik).elbo.mean()
    loss.backward()
    for net in (enc, dec):
        for name, p in net.named_parameters():
            assert p.grad is not None, f"{type(net).__name__}.{name} got no gradient"
            assert p.grad.abs().sum() > 0, f"{type(net).__name__}.{name} got an all-zero gradient"


# Minimum rise of the mean ELBO (nats per datapoint) of a fixed batch of 64 real images after
# 30 Adam steps (lr 1e-3) on it, from PyTorch's default init. Observed (seeded, CPU): 137-303 nats on
# MNIST, 196-458 on Frey Face, from about -500 to -550; the U-Nets rise most, the MLP least.
MIN_RISE = {"mnist": 100.0, "frey": 150.0}


@pytest.mark.parametrize("backbone,dataset", CASES)
def test_a_few_adam_steps_raise_the_elbo_on_real_data(backbone, dataset, request):
    dm = request.getfixturevalue(dataset)
    shape, lik_cls = SHAPES[dataset]
    assert dm.data_shape == shape
    lik = lik_cls()
    torch.manual_seed(0)
    enc, dec = make(backbone, shape, lik)
    x = dm.splits["train"][:64]

    def mean_elbo() -> float:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1)  # the same eps before and after: the change is the networks'
            return elbo(x, enc, dec, lik, n_samples=4).elbo.mean().item()

    before = mean_elbo()
    params = [*enc.parameters(), *dec.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    for _ in range(30):
        opt.zero_grad()
        (-elbo(x, enc, dec, lik).elbo.mean()).backward()
        opt.step()
    after = mean_elbo()
    assert math.isfinite(after)
    assert after - before > MIN_RISE[dataset], f"ELBO {before:.1f} -> {after:.1f} nats"


@pytest.mark.parametrize("backbone", ["cnn", "unet"])
def test_odd_sizes_and_deeper_stacks_crop_to_the_data(backbone):
    """13 x 9 through three halvings (13 -> 7 -> 4 -> 2, 9 -> 5 -> 3 -> 2), then 2 -> 16, cropped to 13 x 9."""
    shape, lik = (2, 13, 9), Gaussian()
    if backbone == "cnn":
        enc, dec = CNNEncoder(shape, 3, channels=[4, 4, 8], hidden_dim=8), CNNDecoder(shape, 3, lik, channels=[4, 4, 8], hidden_dim=8)
    else:
        kw = dict(channels=[4, 4, 8, 8], norm_groups=2, spatial_latent=True, latent_channels=1)
        enc, dec = UNetEncoder(shape, 4, **kw), UNetDecoder(shape, 4, lik, **kw)
        assert enc.latent_shape == (1, 2, 2)
    mean, _ = enc(torch.rand(3, *shape))
    assert dec.raw(mean).shape == (3, 2, *shape)


def test_bad_widths_fail_with_the_config_key():
    shape, lik = (1, 28, 28), Bernoulli()
    for bad in ([], [8, 0], "64", [8, 2.5], [True]):
        with pytest.raises(ConfigError, match=r"net\.encoder\.channels must be a non-empty list of positive integers"):
            CNNEncoder(shape, 2, channels=bad)
    with pytest.raises(ConfigError, match=r"net\.decoder\.hidden_dim must be a positive integer, got 0"):
        CNNDecoder(shape, 2, lik, hidden_dim=0)
    with pytest.raises(ConfigError, match=r"net\.decoder\.channels must all be divisible by net\.decoder\.norm_groups \(8\)"):
        UNetDecoder(shape, 2, lik, channels=[8, 12])
    with pytest.raises(ConfigError, match=r"net\.encoder\.num_res_blocks must be a positive integer"):
        UNetEncoder(shape, 2, num_res_blocks=0)
    with pytest.raises(ConfigError, match=r"net\.encoder\.spatial_latent must be true or false"):
        UNetEncoder(shape, 2, spatial_latent="yes")
    # default U-Net on MNIST: 4 x 7 x 7 latent, so latent_dim must be 196
    with pytest.raises(ConfigError, match=r"4x7x7 latent .* set model\.latent_dim=196 .* got model\.latent_dim=20"):
        UNetEncoder(shape, 20, spatial_latent=True)
    with pytest.raises(ConfigError, match=r"net\.decoder\.spatial_latent=true .* set model\.latent_dim=140"):
        UNetDecoder((1, 28, 20), 20, Gaussian(), spatial_latent=True)


def test_encoders_and_decoders_mix_directly():
    shape, lik = (1, 28, 20), Gaussian()
    n = spatial_latent_dim(shape)
    spatial_enc = UNetEncoder(shape, n, **UNET_SMALL, spatial_latent=True, latent_channels=LATENT_CHANNELS)
    pairs = [
        (CNNEncoder(shape, LATENT, channels=[4]), MLPDecoder(shape, LATENT, lik, hidden_dim=8)),
        (MLPEncoder(shape, LATENT, hidden_dim=8), CNNDecoder(shape, LATENT, lik, channels=[4])),
        (CNNEncoder(shape, LATENT, channels=[4]), UNetDecoder(shape, LATENT, lik, **UNET_SMALL)),
        (spatial_enc, CNNDecoder(shape, n, lik, channels=[4])),  # decoders flatten a spatial z
        (spatial_enc, MLPDecoder(shape, n, lik, hidden_dim=8)),
        (MLPEncoder(shape, n, hidden_dim=8), UNetDecoder(shape, n, lik, **UNET_SMALL, spatial_latent=True,
                                                          latent_channels=LATENT_CHANNELS)),
    ]
    x = torch.rand(3, *shape)
    for enc, dec in pairs:
        who = (type(enc).__name__, type(dec).__name__)
        enc.zero_grad(), dec.zero_grad()
        torch.manual_seed(1)
        terms = elbo(x, enc, dec, lik)
        # the same estimate by hand: z = mean + sigma * eps with the same eps, the decoder on z flattened,
        # Gaussian log-density summed over pixels, KL of Appendix B
        torch.manual_seed(1)
        mean, logvar = enc(x)
        z = mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)
        params = dec(z)
        mu, lv = params["mean"], params["logvar"]
        log_px = (-0.5 * (math.log(2 * math.pi) + lv + (x - mu) ** 2 / lv.exp())).flatten(1).sum(1)
        kl = -0.5 * (1 + logvar - mean**2 - logvar.exp()).flatten(1).sum(1)
        assert terms.elbo.shape == (3,) and torch.isfinite(terms.elbo).all(), who
        assert torch.allclose(terms.elbo, log_px - kl, rtol=1e-5, atol=1e-3), who
        # one backward pass reaches both networks of the mixed pair
        terms.elbo.sum().backward()
        for net in (enc, dec):
            assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters()), who


# -- through Hydra: the configs compose, pass the CLI's checks, build and run ----------------------


def _build(overrides, data_module=None):
    from aevb.building import build
    from aevb.cli import check_values

    cfg = compose(["model.init_std=null", *overrides])
    check_values(cfg)
    return cfg, *build(cfg, data_module=data_module)


def _small(encoder: str, decoder: str) -> list[str]:
    return [o.format(side="encoder") for o in SMALL_OVERRIDES[encoder]] + [o.format(side="decoder") for o in SMALL_OVERRIDES[decoder]]


@pytest.mark.parametrize("encoder,decoder", [("cnn", "mlp"), ("mlp", "cnn"), ("unet", "cnn"), ("cnn", "unet")])
def test_hydra_mixes_encoder_and_decoder(encoder, decoder, mnist):
    overrides = [f"net/encoder={encoder}", f"net/decoder={decoder}", "model.latent_dim=3", *_small(encoder, decoder)]
    cfg, dm, model = _build(overrides, data_module=mnist)
    assert cfg.net.encoder._target_.split(".")[-1].lower() == f"{encoder}encoder"
    assert cfg.net.decoder._target_.split(".")[-1].lower() == f"{decoder}decoder"
    terms = model.elbo_terms(mnist.splits["val"][:4])
    assert terms.elbo.shape == (4,) and torch.isfinite(terms.elbo).all()
    assert model.sample(2).shape == (2, 1, 28, 28)


@pytest.mark.parametrize("net", ["cnn", "unet"])
def test_hydra_builds_each_backbone_for_frey_face(net, mirror):
    """The data module comes from the config too: sizes (28 x 20) flow from the data, not from the net config."""
    overrides = [f"net={net}", "data=frey_face", f"data.mirror={mirror}", "model.latent_dim=5", *_small(net, net)]
    cfg, dm, model = _build(overrides)
    assert dm.data_shape == (1, 28, 20) and cfg.paper.likelihood == "gaussian"
    terms = model.elbo_terms(dm.splits["test"][:4])
    assert terms.elbo.shape == (4,) and torch.isfinite(terms.elbo).all()
    assert model.sample(2).shape == (2, 1, 28, 20)


def test_hydra_spatial_latent_decoder_follows_encoder(frey):
    """Setting the encoder's spatial_latent is enough: the decoder config follows it by interpolation."""
    overrides = ["net=unet", "data=frey_face", "net.encoder.spatial_latent=true", "net.encoder.latent_channels=2",
                 "model.latent_dim=70",  # 2 x 7 x 5: three levels, 28x20 -> 14x10 -> 7x5
                 "net.encoder.channels=[4,8,8]", "net.decoder.channels=[4,8,8]",
                 "net.encoder.norm_groups=4", "net.decoder.norm_groups=4"]
    cfg, dm, model = _build(overrides, data_module=frey)
    assert cfg.net.decoder.spatial_latent is True and cfg.net.decoder.latent_channels == 2
    assert model.encoder.latent_shape == (2, 7, 5)
    mean, logvar = model.encoder(frey.splits["val"][:3])
    assert mean.shape == logvar.shape == (3, 2, 7, 5)
    assert torch.isfinite(model.elbo_terms(frey.splits["val"][:3]).elbo).all()
    assert model.sample(2).shape == (2, 1, 28, 20)


def test_backbones_experiment_composes_for_every_swept_net(mnist):
    cfg = compose(["experiment=backbones_mnist"], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.net == "mlp,cnn,unet"
    assert cfg.model.init_std is None and cfg.data.binarize == "dynamic" and cfg.max_samples > 0
    assert cfg.model.optimizer._target_ == "torch.optim.Adam"
    for net in cfg.hydra.sweeper.params.net.split(","):
        _, _, model = _build(["experiment=backbones_mnist", f"net={net}", *_small(net, net)], data_module=mnist)
        assert type(model.encoder).__name__.lower() == f"{net}encoder"
        assert isinstance(model.configure_optimizers(), torch.optim.Adam)
        assert torch.isfinite(model.elbo_terms(mnist.splits["val"][:2]).elbo).all()


# -- hidden-layer activations (net.<side>.activation) ------------------------------------------------------------
@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "elu", "silu", "gelu"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_each_activation_is_built_and_trains_a_few_steps_under_the_paper_init(net, activation, mnist):
    """Through Hydra with the paper's N(0, 0.01) init (the init rules do not depend on the activation):
    every hidden dense layer holds the chosen module, and 30 Adagrad steps of the paper's rate raise the ELBO."""
    from aevb.building import build
    from aevb.cli import check_values

    cls = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "leaky_relu": torch.nn.LeakyReLU, "elu": torch.nn.ELU,
           "silu": torch.nn.SiLU, "gelu": torch.nn.GELU}[activation]
    overrides = [f"net={net}", "model.latent_dim=4", *_small(net, net),
                 f"net.encoder.activation={activation}", f"net.decoder.activation={activation}"]
    cfg = compose(overrides)
    check_values(cfg)
    _, model = build(cfg, data_module=mnist)
    dense = (model.encoder.hidden if net == "mlp" else model.encoder.features, model.decoder.net if net == "mlp"
             else model.decoder.stem)
    found = [type(m) for side in dense for m in side if not isinstance(m, (torch.nn.Linear, torch.nn.Flatten,
                                                                             torch.nn.Conv2d, torch.nn.Unflatten))]
    assert found.count(cls) == (2 if net == "mlp" else 3 + (activation == "relu") * 2), found  # (+ the convs' ReLU)
    assert all(abs(float(p.detach().std()) - 0.01) < 0.005 for p in model.parameters() if p.numel() > 100)  # N(0, 0.01)

    x = mnist.splits["train"][:100]

    def mean_elbo() -> float:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1)
            return model.elbo_terms(x).elbo.mean().item()

    torch.manual_seed(0)
    before = mean_elbo()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.02)
    for _ in range(30):
        opt.zero_grad()
        (-model.elbo_terms(x).elbo.mean()).backward()
        opt.step()
    after = mean_elbo()
    assert math.isfinite(after) and after - before > 100.0, f"{activation}: ELBO {before:.1f} -> {after:.1f} nats"


def test_an_unknown_activation_is_refused_in_one_line_before_anything_runs(tmp_path):
    from helpers import assert_one_line_error, run_cli

    with pytest.raises(ConfigError, match=r"net\.decoder\.activation must be one of tanh, relu, leaky_relu, elu, "
                                          r"silu, gelu, got 'sigmoid'"):
        MLPDecoder((1, 28, 28), 2, Bernoulli(), hidden_dim=8, activation="sigmoid")
    with pytest.raises(ConfigError, match=r"net\.encoder\.activation must be one of .* got 'Tanh'"):
        CNNEncoder((1, 28, 28), 2, activation="Tanh")
    proc = run_cli("net.encoder.activation=swish", f"hydra.run.dir={tmp_path / 'run'}")
    assert_one_line_error(proc, "net.encoder.activation must be one of tanh, relu, leaky_relu, elu, silu, gelu, "
                                "got 'swish'")
    assert not (tmp_path / "run").exists()
