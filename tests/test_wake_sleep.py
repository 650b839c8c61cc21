"""Wake-sleep baseline: each phase ascends its own objective, and the module trains through Lightning.

Objectives are measured per datapoint in nats on fixed evaluation noise (a
forked, re-seeded RNG), so a before/after difference comes from the parameter
updates alone, never from a lucky draw.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import lightning as L
import pytest
import torch

from aevb.likelihoods import Bernoulli
from aevb.models.base import VAEModuleBase
from aevb.models.wake_sleep import WakeSleep
from aevb.nets.base import init_normal_
from aevb.nets.mlp import MLPDecoder, MLPEncoder
from helpers import compose

LATENT, HIDDEN, N_FIXED, BATCH = 3, 64, 300, 100


@pytest.fixture(scope="module")
def datamodule(mirror):
    """This module's own MNIST (its trainer must not touch conftest's session-wide one); skips without the mirror."""
    from aevb.data import MNISTDataModule

    dm = MNISTDataModule(mirror=str(mirror), verify_checksums=False, batch_size=BATCH, eval_batch_size=500)
    dm.setup()
    return dm


@pytest.fixture(scope="module")
def images(datamodule):
    return datamodule.splits["train"][:N_FIXED]


def make_model(n_train: int = 50_000, **kwargs) -> WakeSleep:
    encoder = MLPEncoder((1, 28, 28), LATENT, hidden_dim=HIDDEN)
    decoder = MLPDecoder((1, 28, 28), LATENT, Bernoulli(), hidden_dim=HIDDEN)
    optimizer = functools.partial(torch.optim.Adagrad, lr=0.02)  # the paper's setting
    return WakeSleep(encoder, decoder, optimizer, latent_dim=LATENT, n_train=n_train, **kwargs)


def wake_objective(model: WakeSleep, x: torch.Tensor) -> float:
    """Mean decoder log p(x|z), z ~ q(z|x), on fixed noise."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(123)
        return float(model.wake_terms(x).recon.mean())


def fixed_dreams(model: WakeSleep, n: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(321)
        return model.dream(n)


def sleep_objective(model: WakeSleep, z: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(model.sleep_logq(z, x).mean())


def plain_step(model: WakeSleep, opt_dec, opt_enc, x: torch.Tensor, sequential: bool = True) -> None:
    """The training step by hand, without Lightning: wake step, then (sequential) dreams from the updated decoder."""
    terms = model.wake_terms(x)
    dreams = None if sequential else model.dream(x.shape[0])  # simultaneous: the decoder before its update
    opt_dec.zero_grad()
    model.wake_loss(terms).backward()
    opt_dec.step()
    logq = model.sleep_logq(*(dreams if dreams is not None else model.dream(x.shape[0])))
    opt_enc.zero_grad()
    model.sleep_loss(logq).backward()
    opt_enc.step()


@pytest.fixture(scope="module")
def warmed(images):
    """A model after 300 wake-sleep steps on the fixed images: its encoder and decoder both carry signal."""
    torch.manual_seed(0)
    model = make_model()
    opt_dec, opt_enc = model.configure_optimizers()
    for _ in range(300):
        plain_step(model, opt_dec, opt_enc, images[torch.randint(0, N_FIXED, (BATCH,))])
    return model.state_dict()


def test_weight_prior_shares_add_up():
    model = make_model(n_train=1000, init_std=None)
    dec = model.weight_prior_term(model.decoder.parameters())
    enc = model.weight_prior_term(model.encoder.parameters())
    assert dec > 0 and enc > 0
    torch.testing.assert_close(dec + enc, model.weight_prior_term())
    off = make_model(n_train=1000, weight_prior=False)
    assert float(off.weight_prior_term(off.decoder.parameters())) == 0.0


def test_phases_touch_only_their_own_network():
    torch.manual_seed(0)
    model = make_model(init_std=None)
    x = torch.rand(8, 1, 28, 28)
    model.wake_loss(model.wake_terms(x)).backward()
    assert all(p.grad is None for p in model.encoder.parameters()), "the wake phase must not train the encoder"
    assert all(p.grad is not None for p in model.decoder.parameters())
    model.zero_grad(set_to_none=True)
    z, xd = model.dream(8)
    assert set(xd.unique().tolist()) <= {0.0, 1.0}, "Bernoulli dreams are binary samples, not means"
    model.sleep_loss(model.sleep_logq(z, xd)).backward()
    assert all(p.grad is None for p in model.decoder.parameters()), "the sleep phase must not train the decoder"
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_wake_terms_are_the_aevb_training_elbo():
    """Same noise -> the ELBO wake-sleep records equals elbo_terms(x), which AEVB records."""
    torch.manual_seed(0)
    model = make_model(init_std=None, estimator="generic", n_samples=2)
    x = torch.rand(16, 1, 28, 28)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ws = model.wake_terms(x)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        ref = model.elbo_terms(x)
    for name in ("elbo", "recon", "kl"):
        torch.testing.assert_close(getattr(ws, name), getattr(ref, name))


WAKE_MIN_GAIN = 100.0  # nats per datapoint; observed ~350 (-543 -> -190) in 100 steps
SLEEP_MIN_GAIN = 0.5  # nats per datapoint; observed ~1.2 (-4.26 -> -3.0) in 100 steps


def test_wake_phase_improves_decoder_loglik(images, warmed):
    """Trained encoder, fresh decoder: wake steps alone raise log p(x|z) for z ~ q(z|x)."""
    torch.manual_seed(1)
    model = make_model()
    model.load_state_dict(warmed)
    init_normal_(model.decoder, 0.01)
    encoder_before = [p.detach().clone() for p in model.encoder.parameters()]
    opt_dec, _ = model.configure_optimizers()
    before = wake_objective(model, images)
    for _ in range(100):
        opt_dec.zero_grad()
        model.wake_loss(model.wake_terms(images[torch.randint(0, N_FIXED, (BATCH,))])).backward()
        opt_dec.step()
    after = wake_objective(model, images)
    assert after - before > WAKE_MIN_GAIN, f"wake objective {before:.2f} -> {after:.2f} nats"
    assert all(torch.equal(a, b) for a, b in zip(encoder_before, model.encoder.parameters()))


def test_sleep_phase_improves_encoder_logq(warmed):
    """Trained decoder, fresh encoder: sleep steps alone raise log q(z|x) on held-out dreamed pairs."""
    torch.manual_seed(2)
    model = make_model()
    model.load_state_dict(warmed)
    init_normal_(model.encoder, 0.01)
    _, opt_enc = model.configure_optimizers()
    z, xd = fixed_dreams(model)
    before = sleep_objective(model, z, xd)
    for _ in range(100):
        opt_enc.zero_grad()
        model.sleep_loss(model.sleep_logq(*model.dream(BATCH))).backward()
        opt_enc.step()
    after = sleep_objective(model, z, xd)
    assert after - before > SLEEP_MIN_GAIN, f"sleep objective {before:.3f} -> {after:.3f} nats"


def test_lightning_run_counts_samples_and_logs(datamodule):
    import lightning as L

    torch.manual_seed(0)
    model = make_model(n_train=datamodule.n_train)
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    steps = 6
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                        limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    assert trainer.global_step == steps, "one global step per batch, as for AEVB"
    assert model.samples_seen == steps * BATCH
    metrics = trainer.callback_metrics
    for key in ("train/elbo_running", "train/recon_running", "train/kl_running", "train/wake_loglik",
                "train/sleep_logq"):
        assert key in metrics and torch.isfinite(metrics[key]), key
    assert float(metrics["train/elbo_running"]) < 0 and float(metrics["train/wake_loglik"]) < 0
    for name, p in model.named_parameters():
        assert not torch.equal(p.detach(), params_before[name]), f"{name} was not updated"


class ReseedEveryStep(L.Callback):
    """The same random stream per step as the hand-rolled loop: torch.manual_seed(1000 + batch_idx)."""

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        torch.manual_seed(1000 + batch_idx)


def _train_lightning(model: WakeSleep, batches: list[torch.Tensor]) -> None:
    trainer = L.Trainer(max_steps=len(batches), logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", devices=1, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[ReseedEveryStep()])
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    assert trainer.global_step == len(batches) and model.samples_seen == sum(len(b) for b in batches)


@pytest.mark.parametrize("phases", ["sequential", "simultaneous"])
def test_training_step_equals_hand_rolled_phases(phases):
    """The module's step = a hand-rolled step with the same random streams; sequential dreams from the updated decoder.

    The hand-rolled sequential step draws its dreams after opt_dec.step(), so agreement to float
    precision shows the module's sleep phase saw the decoder after that step's wake update; the
    simultaneous option agrees with the hand-rolled simultaneous step instead, and the two differ.
    """
    torch.manual_seed(0)
    batches = [torch.rand(20, 1, 28, 28) for _ in range(3)]
    torch.manual_seed(1)
    init = make_model(n_train=1000).state_dict()
    module = make_model(n_train=1000, phases=phases)
    module.load_state_dict(init)
    _train_lightning(module, batches)

    by_hand = make_model(n_train=1000)
    by_hand.load_state_dict(init)
    opt_dec, opt_enc = by_hand.configure_optimizers()
    for i, x in enumerate(batches):
        torch.manual_seed(1000 + i)
        plain_step(by_hand, opt_dec, opt_enc, x, sequential=phases == "sequential")
    for (name, p), q in zip(module.named_parameters(), by_hand.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the hand-rolled step")

    other = make_model(n_train=1000)
    other.load_state_dict(init)
    opt_dec, opt_enc = other.configure_optimizers()
    for i, x in enumerate(batches):
        torch.manual_seed(1000 + i)
        plain_step(other, opt_dec, opt_enc, x, sequential=phases != "sequential")
    enc_gap = max(float((p - q).detach().abs().max()) for p, q in zip(module.encoder.parameters(), other.encoder.parameters()))
    assert enc_gap > 1e-4, f"sequential and simultaneous encoders agree to {enc_gap:.2e}: the test could not tell them apart"


def test_bad_phases_option_is_rejected():
    from aevb.errors import AevbError

    with pytest.raises(AevbError, match="model.phases must be one of sequential, simultaneous"):
        make_model(phases="alternating")


def test_config_composes_and_builds(datamodule):
    from omegaconf import OmegaConf

    from aevb.building import build

    cfg = compose(["model=wake_sleep", "model.latent_dim=3"])
    assert "beta" not in cfg.model
    _, model = build(cfg, data_module=datamodule)
    assert isinstance(model, WakeSleep) and isinstance(model, VAEModuleBase)
    assert model.latent_dim == 3 and not model.automatic_optimization
    # every key of the model config reaches the module
    assert model.phases == "sequential", "the algorithm's order is the default"
    for key in ("latent_dim", "n_samples", "estimator", "weight_prior", "init", "init_std", "phases"):
        assert model.hparams[key] == OmegaConf.select(cfg, f"model.{key}"), key
    opt_dec, opt_enc = model.configure_optimizers()
    assert isinstance(opt_dec, torch.optim.Adagrad) and opt_dec.defaults["lr"] == cfg.model.optimizer.lr
    assert {id(p) for g in opt_dec.param_groups for p in g["params"]} == {id(p) for p in model.decoder.parameters()}
    assert {id(p) for g in opt_enc.param_groups for p in g["params"]} == {id(p) for p in model.encoder.parameters()}


def test_average_gradients_is_the_mean_over_two_gloo_ranks(tmp_path):
    """Each phase's gradients are averaged over the ranks (not summed), one all-reduce; a grad-less parameter stays so."""
    import torch.multiprocessing as mp

    from ddp_probe import average_gradients_worker

    mp.spawn(average_gradients_worker, args=(2, str(tmp_path / "store"), str(tmp_path / "grads")), nprocs=2)
    for rank in (0, 1):
        g = torch.load(tmp_path / f"grads.rank{rank}")
        torch.testing.assert_close(g[0], 1.5 * torch.arange(6.0).view(3, 2))  # mean of 1x and 2x
        torch.testing.assert_close(g[1], 1.5 * torch.arange(4.0))
        assert g[2] is None


@pytest.mark.slow  # ~20 s: two aevb-train processes
@pytest.mark.parametrize("fast", ["false", "true"])
def test_ddp_two_cpu_processes_keep_ranks_identical(mirror, tmp_path, fast):
    """2 gloo ranks, different data each: identical final parameters only if every phase's gradients were synced
    (standard loop: WakeSleep._phase_update; fast path: WakeSleepStep's all-reduce per phase)."""
    import json

    from helpers import run_cli

    probe = tmp_path / "probe"
    proc = run_cli("model=wake_sleep", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=frey_face",
                   "model.latent_dim=2", "max_samples=2000", "logger=csv", "callbacks.progress_bar=null",
                   f"fast.enabled={fast}", "+callbacks.ddp_probe._target_=ddp_probe.DdpProbe", f"+callbacks.ddp_probe.out_dir={probe}",
                   f"hydra.run.dir={tmp_path / 'run'}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror),
                              "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"), str(Path(__file__).parent)])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_seen"] == 2000 and summary["global_step"] == 10, "one global step per batch of 2 x 100"
    r0, r1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))
    assert r0["global_step"] == r1["global_step"] == 10 and r0["samples_seen"] == r1["samples_seen"] == 2000
    assert not torch.equal(r0["first_batch"], r1["first_batch"]), "the ranks must see different data"
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), f"{name} differs between the ranks"
    init_std = torch.cat([p.flatten() for p in r0["params"].values()]).std()
    assert init_std > 0.011, "training moved the parameters away from N(0, 0.01)"
