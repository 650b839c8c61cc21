"""Protocol options of issue 13: the named initialisations (model.init) and Adagrad's warm-up.

Distributions are checked per tensor against sampling error: the sample std of n
draws from N(0, s^2) has standard error s / sqrt(2n), so |std / s - 1| < 5 / sqrt(2n)
fails a correct init with probability ~1e-6 per tensor and a wrong scale (even by 10%)
for every tensor of 500+ elements.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch

from aevb.errors import ConfigError
from aevb.likelihoods import Gaussian
from aevb.models import AEVB
from aevb.nets.base import initialise_
from aevb.nets.mlp import MLPDecoder, MLPEncoder
from aevb.optim import Adagrad
from test_backbones import SHAPES, make

FREY = (1, 28, 20)
LATENT, HIDDEN = 5, 200
# the authors' parameters that start at 0 (MLP names), and each weight matrix's fan-in (inputs per unit)
ZEROED = {"encoder.logvar.weight", "encoder.logvar.bias", "decoder.net.3.bias"}
FAN_IN = {"encoder.hidden.1.weight": 560, "encoder.mean.weight": HIDDEN, "decoder.net.1.weight": LATENT,
          "decoder.net.3.weight": HIDDEN}


def frey_mlp(init: str, seed: int = 0) -> AEVB:
    torch.manual_seed(seed)
    enc, dec = MLPEncoder(FREY, LATENT, hidden_dim=HIDDEN), MLPDecoder(FREY, LATENT, Gaussian(), hidden_dim=HIDDEN)
    return AEVB(enc, dec, functools.partial(torch.optim.Adagrad, lr=0.02), latent_dim=LATENT, n_train=1565, init=init)


def assert_normal(t: torch.Tensor, std: float, name: str) -> None:
    n = t.numel()
    assert t.abs().min() > 0, f"{name}: exact zeros in a normal draw"
    assert float(t.abs().max()) < 6 * std, f"{name}: |value| beyond 6 std"
    if n >= 50:  # smaller tensors: the bounds above only
        assert abs(float(t.std()) / std - 1) < 5 / math.sqrt(2 * n), f"{name}: std {float(t.std()):.4g}, want {std:.4g}"
        assert abs(float(t.mean())) < 5 * std / math.sqrt(n), f"{name}: mean {float(t.mean()):.3g}"


@pytest.mark.parametrize("init", ["paper", "authors_2014", "fan_in"])
def test_init_gives_the_stated_distribution_per_tensor(init):
    model = frey_mlp(init)
    params = dict(model.named_parameters())
    assert set(FAN_IN) | ZEROED <= set(params), "test names out of date"
    zeros = {name for name, p in params.items() if torch.count_nonzero(p) == 0}
    assert zeros == (set() if init == "paper" else ZEROED)
    for name, p in params.items():
        if name in zeros:
            continue
        std = 1 / math.sqrt(FAN_IN[name]) if init == "fan_in" and name in FAN_IN else 0.01
        assert_normal(p.detach(), std, f"{init} {name}")


def test_authors_2014_draws_the_paper_init_except_the_zeroed():
    """Same seed: every non-zeroed tensor equals the paper init's, so only the zeroed ones differ."""
    paper, authors = dict(frey_mlp("paper").named_parameters()), dict(frey_mlp("authors_2014").named_parameters())
    for name, p in authors.items():
        assert torch.equal(p, paper[name]) != (name in ZEROED), name


@pytest.mark.parametrize("backbone", ["mlp", "cnn", "unet", "unet_spatial"])
@pytest.mark.parametrize("init", ["authors_2014", "fan_in"])
def test_every_backbone_starts_with_unit_variance_q_and_zero_output_bias(backbone, init):
    """What the backbone interface names (logvar_head, output_bias) is what q's log-variance and the decoder's last bias are."""
    shape, lik_cls = SHAPES["frey"]
    torch.manual_seed(0)
    enc, dec = make(backbone, shape, lik_cls())
    initialise_(enc, dec, init, 0.01)
    mean, logvar = enc(torch.rand(3, *shape))
    assert torch.count_nonzero(logvar) == 0, "log sigma^2 = 0 for every x: its head is all zero"
    assert torch.count_nonzero(mean) > 0, "the mean head is drawn, not zeroed"
    (bias,) = dec.output_bias()
    per_map = lik_cls().n_params * shape[0]  # conv heads: one bias per output map; MLP: one per output unit
    assert bias.numel() == (per_map * math.prod(shape[1:]) if backbone == "mlp" else per_map)
    assert torch.count_nonzero(bias) == 0
    n_zero = sum(int((p == 0).sum()) for p in (*enc.parameters(), *dec.parameters()))
    assert n_zero == sum(t.numel() for t in (*enc.logvar_head(), *dec.output_bias())), "nothing else is zero"


def test_bad_init_options_are_rejected():
    with pytest.raises(ConfigError, match="model.init must be one of paper, authors_2014, fan_in, got 'xavier'"):
        frey_mlp("xavier")
    enc, dec = MLPEncoder(FREY, LATENT, hidden_dim=8), MLPDecoder(FREY, LATENT, Gaussian(), hidden_dim=8)
    with pytest.raises(ConfigError, match="model.init_std=null keeps PyTorch's default init"):
        AEVB(enc, dec, torch.optim.Adagrad, latent_dim=LATENT, n_train=10, init="fan_in", init_std=None)


# -- Adagrad warm-up ------------------------------------------------------------------------------------------------
def _grads(n_steps: int, seed: int = 0) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(4, 3, generator=g), torch.randn(3, generator=g)] for _ in range(n_steps)]


def _run(opt_cls, grads, **kw) -> list[list[torch.Tensor]]:
    """Feed a fixed gradient sequence; the parameters after every step."""
    torch.manual_seed(1)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = opt_cls(params, **kw)
    out = []
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
        out.append([p.detach().clone() for p in params])
    return out


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("reg", [0.0, 1e-8, 0.5])
def test_without_warmup_it_is_torch_adagrad_exactly(foreach, reg):
    grads = _grads(6)
    ours = _run(Adagrad, grads, lr=0.02, warmup_reg=reg, foreach=foreach)
    ref = _run(torch.optim.Adagrad, grads, lr=0.02, initial_accumulator_value=reg, foreach=foreach)
    for a, b in zip(ours, ref):
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_warmup_holds_parameters_for_exactly_its_steps_then_follows_the_formula():
    warmup, lr, reg, eps = 4, 0.02, 1e-8, 1e-10
    grads = _grads(warmup + 3)
    history = _run(Adagrad, grads, lr=lr, warmup_steps=warmup, warmup_reg=reg)
    torch.manual_seed(1)
    start = [torch.randn(4, 3), torch.randn(3)]
    for t in range(warmup):
        assert all(torch.equal(p, s) for p, s in zip(history[t], start)), f"moved during warm-up step {t + 1}"
    expected = [s.double() for s in start]
    for t in range(warmup, warmup + 3):  # w -= lr * g_t / (sqrt(reg + sum_{u <= t} g_u^2) + eps), sums from step 1
        for i in range(2):
            acc = reg + sum(grads[u][i].double() ** 2 for u in range(t + 1))
            expected[i] = expected[i] - lr * grads[t][i].double() / (acc.sqrt() + eps)
            torch.testing.assert_close(history[t][i].double(), expected[i], rtol=1e-6, atol=1e-7)
        assert not torch.equal(history[t][0], history[t - 1][0])


def test_warmup_count_survives_a_checkpoint():
    grads = _grads(5)
    params = [torch.nn.Parameter(torch.zeros(4, 3)), torch.nn.Parameter(torch.zeros(3))]
    opt = Adagrad(params, lr=0.1, warmup_steps=3)
    for gs in grads[:2]:
        for p, g in zip(params, gs):
            p.grad = g
        opt.step()
    fresh = Adagrad(params, lr=0.1, warmup_steps=3)
    fresh.load_state_dict(opt.state_dict())
    for p, g in zip(params, grads[2]):
        p.grad = g
    fresh.step()  # the third warm-up step: still no move
    assert all(torch.count_nonzero(p) == 0 for p in params)
    for p, g in zip(params, grads[3]):
        p.grad = g
    fresh.step()
    assert all(torch.count_nonzero(p) > 0 for p in params)


def test_bad_warmup_options_are_rejected():
    with pytest.raises(ConfigError, match="model.optimizer.warmup_steps must be an integer >= 0, got -1"):
        Adagrad([torch.nn.Parameter(torch.zeros(2))], warmup_steps=-1)
    with pytest.raises(ConfigError, match="model.optimizer.warmup_reg must be >= 0"):
        Adagrad([torch.nn.Parameter(torch.zeros(2))], warmup_reg=-1e-8)


@pytest.mark.parametrize("model_name", ["aevb", "wake_sleep"])
def test_warmup_from_the_config_holds_every_optimiser_then_trains(model_name, frey):
    """Through Hydra and Lightning, both methods (wake-sleep: both optimisers): 3 steps still, the 4th moves all."""
    import lightning as L

    from aevb.building import build
    from helpers import compose

    cfg = compose([f"model={model_name}", "model.latent_dim=2", "model.init=fan_in",
                   "model.optimizer.warmup_steps=3", "model.optimizer.warmup_reg=1e-8", "net.encoder.hidden_dim=16",
                   "net.decoder.hidden_dim=16"])
    _, model = build(cfg, data_module=frey)
    assert model.hparams["init"] == "fan_in"
    opts = model.configure_optimizers()
    opts = opts if isinstance(opts, list) else [opts]
    assert all(isinstance(o, Adagrad) and o.param_groups[0]["warmup_steps"] == 3 for o in opts)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for steps, moved in ((3, False), (4, True)):
        model.load_state_dict({**model.state_dict(), **start})
        trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu", devices=1, limit_val_batches=0)
        trainer.fit(model, train_dataloaders=frey.train_dataloader())
        assert trainer.global_step == steps
        for n, p in model.named_parameters():
            assert torch.equal(p, start[n]) != moved, f"{n} after {steps} steps"
