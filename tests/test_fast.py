"""The fast training path (aevb.fast) is the same algorithm as the standard loop, only faster.

Step-by-step comparisons run both paths through Lightning on the real MNIST mirror with
the same seed: the same batches (EpochShuffle's order), the same noise (the fast loader
draws the random number the standard DataLoader draws at each epoch start) and the same
operations, so on CPU the per-step losses are expected to agree to float32 rounding.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from aevb.callbacks import ElboCurve
from aevb.data.base import EpochShuffle
from aevb.fast.adagrad import adagrad_state, adagrad_step_, count_steps_, supports
from aevb.data.batches import BatchPlan
from aevb.fast.plan import StopPoints, epoch_batches
from helpers import compose
from helpers import assert_one_line_error, run_cli

# Both paths run the same float32 kernels in the same order on the same noise; the optimiser update
# is a foreach kernel on one path and a per-tensor loop on the other, which on CPU compute the same
# values. Allow float32 rounding accumulated over 200 steps on losses of 200-5000 nats: 1e-5 relative.
LOSS_RTOL = 1e-5


# -- Adagrad ------------------------------------------------------------------------------------
def test_foreach_adagrad_equals_torch_adagrad():
    torch.manual_seed(0)
    shapes = [(50, 20), (20,), (7, 3, 2)]
    ref = [torch.randn(s, requires_grad=True) for s in shapes]
    mine = [p.detach().clone().requires_grad_() for p in ref]
    opt_ref = torch.optim.Adagrad(ref, lr=0.02, initial_accumulator_value=0.1)
    opt_mine = torch.optim.Adagrad(mine, lr=0.02, initial_accumulator_value=0.1)
    assert supports(opt_mine)
    for _ in range(25):
        grads = [torch.randn(s) * 3 for s in shapes]
        for p, g in zip(ref, grads):
            p.grad = g.clone()
        opt_ref.step()
        for params, sums, steps, lr, eps in adagrad_state(opt_mine):
            adagrad_step_(params, grads, sums, lr, eps)
            count_steps_(steps, 1)
    for p, q in zip(ref, mine):
        torch.testing.assert_close(q, p, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(opt_mine.state[q]["sum"], opt_ref.state[p]["sum"], rtol=1e-6, atol=1e-7)
        assert float(opt_mine.state[q]["step"]) == float(opt_ref.state[p]["step"]) == 25.0


def test_foreach_adagrad_refuses_settings_it_does_not_reproduce():
    p = [torch.zeros(3, requires_grad=True)]
    assert not supports(torch.optim.Adagrad(p, lr=0.02, lr_decay=0.1))
    assert not supports(torch.optim.Adagrad(p, lr=0.02, weight_decay=1e-4))
    assert not supports(torch.optim.Adam(p, lr=1e-3))


# -- the chunk plan and the batch order -----------------------------------------------------------
def test_epoch_batches_are_the_standard_loaders_batches_on_every_rank():
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from torch.utils.data import BatchSampler

    n, batch, seed, epoch = 1050, 100, 3, 2
    sampler = BatchSampler(EpochShuffle(n, seed, lambda: epoch), batch, drop_last=True)
    assert epoch_batches(n, batch, seed, epoch).tolist() == list(sampler)
    for rank in (0, 1, 2):  # 10 batches over 3 ranks: the last round is padded from the epoch's start
        dealt = list(DistributedSamplerWrapper(sampler, num_replicas=3, rank=rank, shuffle=False))
        assert epoch_batches(n, batch, seed, epoch, world=3, rank=rank).tolist() == dealt


def _boundaries(chunks):
    return {c.epoch * 500 + c.stop for c in chunks}


def test_chunks_end_at_every_curve_point_validation_checkpoint_and_the_budget():
    curve = ElboCurve(points_per_decade=4, start=1000)
    stops = StopPoints(plan=BatchPlan(50_000, 100), steps_per_call=64, max_steps=1234, val_every=120,
                       ckpt_every=(300,), curves=(curve,))
    chunks = [c for e in range(3) for c in stops.chunks(e, e * 500)]
    steps = [(c.epoch * 500 + c.start, c.epoch * 500 + c.stop) for c in chunks]
    assert steps[0][0] == 0 and steps[-1][1] == 1234  # every step once, up to the budget
    assert all(a[1] == b[0] for a, b in zip(steps, steps[1:])) and all(0 < b - a <= 64 for a, b in steps)
    ends = _boundaries(chunks)
    curve_steps = {-(-curve.grid_point(i) // 100) for i in range(20) if curve.grid_point(i) <= 123_400}
    must = ({e * 500 + v for e in range(3) for v in range(120, 500, 120)} | {500, 1000} | {300, 600, 900, 1200}
            | curve_steps)
    must = {s for s in must if s <= 1234}
    assert must <= ends, sorted(must - ends)
    # a run resumed at any step cuts its chunks at the same must-points
    for first in (300, 777):
        resumed = [c for e in range(first // 500, 3) for c in stops.chunks(e, first)]
        assert {s for s in must if s > first} <= _boundaries(resumed)


# -- same algorithm through Lightning -----------------------------------------------------------
def _fit(fast: bool, steps: int, overrides=(), ckpt_path=None, rng_state=None):
    """Train through Lightning on MNIST; returns (per-step losses, model, trainer)."""
    import lightning as L

    from aevb.fast import enable_fast_path
    from aevb.building import build

    cfg = compose(["logger=csv", "callbacks=none", "fast.steps_per_call=64", *overrides])
    L.seed_everything(0, verbose=False)
    dm, model = build(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0)
    losses: list = []
    if fast:
        loop = enable_fast_path(cfg.fast, trainer, model, dm)
        loop.trace = losses
    else:
        class Record(L.Callback):
            def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
                if outputs and "loss" in outputs:  # (wake-sleep's step returns none)
                    losses.append(outputs["loss"].detach())

        trainer.callbacks.append(Record())
    if rng_state is not None:
        torch.set_rng_state(rng_state)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return (torch.stack(losses) if losses else None), model, trainer


@pytest.mark.parametrize("binarize", ["none", "dynamic"])
def test_fast_and_standard_paths_agree_step_by_step(mirror, binarize):
    args = [f"data.mirror={mirror}", f"data.binarize={binarize}"]
    standard, std_model, _ = _fit(False, 200, args)
    fast, fast_model, trainer = _fit(True, 200, args)
    assert len(standard) == len(fast) == 200 and trainer.global_step == 200 and fast_model.samples_seen == 20_000
    torch.testing.assert_close(fast, standard, rtol=LOSS_RTOL, atol=0)
    assert float(standard[-1]) < float(standard[0]) - 200  # it trained: 543 -> ~200 nats
    for p, q in zip(std_model.parameters(), fast_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-6)


def test_fast_path_resumed_mid_epoch_continues_the_uninterrupted_run(mirror, tmp_path):
    """Lightning does not store the RNG state, so the test carries it over; everything else comes from the checkpoint."""
    args = [f"data.mirror={mirror}"]
    whole, _, _ = _fit(True, 130, args)
    first, _, trainer = _fit(True, 60, args)
    ckpt = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(ckpt)
    rest, model, trainer = _fit(True, 130, args, ckpt_path=str(ckpt), rng_state=torch.get_rng_state())
    assert trainer.global_step == 130 and model.samples_seen == 13_000 and len(rest) == 70
    torch.testing.assert_close(torch.cat([first, rest]), whole, rtol=LOSS_RTOL, atol=0)


@pytest.mark.parametrize("data", ["mnist", "frey_face"])
def test_wake_sleep_fast_and_standard_paths_agree(mirror, data):
    """Wake-sleep's fast step (aevb.fast.step.WakeSleepStep) takes the standard step's draws in the same order
    (wake noise, dream z, dream x: Bernoulli on MNIST, Gaussian on Frey Face): same parameters after 150 steps
    and the same recorded phase objectives."""
    args = [f"data.mirror={mirror}", "model=wake_sleep", f"data={data}", "model.latent_dim=5"]
    _, std_model, std_trainer = _fit(False, 150, args)
    _, fast_model, trainer = _fit(True, 150, args)
    assert trainer.global_step == std_trainer.global_step == 150 and fast_model.samples_seen == std_model.samples_seen
    for (name, p), q in zip(std_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    for key in ("train/elbo_running", "train/wake_loglik", "train/sleep_logq"):
        a, b = float(std_trainer.callback_metrics[key]), float(trainer.callback_metrics[key])
        assert abs(a - b) < 1e-3 * max(1.0, abs(a)), (key, a, b)


# -- end to end: the files mean what they meant ---------------------------------------------------
FREY_RUN = ["data=frey_face", "model.latent_dim=5", "max_samples=6000", "trainer.val_check_interval=5",
            "logger=csv", "callbacks.progress_bar=null", "callbacks.elbo_curve.start=1000",
            "callbacks.elbo_curve.points_per_decade=2"]


def _rows(path):
    return list(csv.DictReader(path.open()))


def test_fast_and_standard_runs_write_the_same_curve_validation_and_summary(mirror, tmp_path):
    runs = {}
    for fast in ("true", "false"):
        proc = run_cli(*FREY_RUN, f"fast.enabled={fast}", f"hydra.run.dir={tmp_path / fast}",
                       env_extra={"AEVB_DATA_MIRROR": str(mirror)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("training loop: fast" in proc.stdout) == (fast == "true")
        runs[fast] = tmp_path / fast
    fast, standard = (json.loads((runs[k] / "summary.json").read_text()) for k in ("true", "false"))
    assert fast["samples_seen"] == standard["samples_seen"] == 6000 and fast["global_step"] == standard["global_step"] == 60
    for key in ("train/elbo", "val/elbo", "test/elbo"):
        assert fast[key] == pytest.approx(standard[key], abs=0.05), key  # same noise and batches: rounding only
    curves = [_rows(runs[k] / "curve.csv") for k in ("true", "false")]
    assert [r["samples_seen"] for r in curves[0]] == [r["samples_seen"] for r in curves[1]] == ["1000", "3200", "6000"]
    for a, b in zip(*curves):
        assert float(a["test_elbo"]) == pytest.approx(float(b["test_elbo"]), abs=0.05)
    val_steps = [[r["step"] for r in _rows(runs[k] / "csv" / "metrics.csv") if r.get("val/elbo")] for k in ("true", "false")]
    # after every 5 steps of each 15-step epoch (12); the final evaluation logs final/val/elbo instead
    assert val_steps[0] == val_steps[1] and len(val_steps[0]) == 12 and val_steps[0][:3] == ["4", "9", "14"]
    finals = [[r["step"] for r in _rows(runs[k] / "csv" / "metrics.csv") if r.get("final/val/elbo")] for k in ("true", "false")]
    assert finals[0] == finals[1] and len(finals[0]) == 1


def test_gpu_trainer_without_a_gpu_is_one_clear_error(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    proc = run_cli("trainer=gpu", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, "trainer.accelerator=gpu needs 1 GPU(s) but 0 are visible", "trainer=cpu")
    assert not (tmp_path / "run").exists()


def test_bad_fast_settings_are_one_clear_error(tmp_path):
    proc = run_cli("fast.steps_per_call=0", f"hydra.run.dir={tmp_path}/run")
    assert_one_line_error(proc, "fast.steps_per_call must be a positive integer, got 0")


def test_progress_bar_counts_steps_not_chunks(mirror, tmp_path):
    """The fast path runs its steps in chunks; the bar still counts the epoch's steps (its last, partial epoch
    here: 10 steps of 100, up to the 5,000-sample budget)."""
    import re

    proc = run_cli("max_samples=5000", "data.train_size=2000", "logger=csv", f"hydra.run.dir={tmp_path}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"Epoch 2\s+\S+ 10/10 ", proc.stdout), proc.stdout[-1500:]
