"""data.drop_last=false: every epoch also trains on its last, smaller batch, with samples_seen and the steps per
epoch exact on the standard loop, the fast path, a packed sweep and DDP (the batch plan, aevb.data.batches)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch.utils.data import BatchSampler

from aevb.callbacks import ElboCurve
from aevb.data.base import EpochShuffle
from aevb.data.batches import BatchPlan
from aevb.fast.plan import StopPoints, epoch_batches
from helpers import assert_one_line_error, run_cli

LOSS_RTOL = 2e-4  # as tests/test_fast.py: float32 sums in another order on the two loops


def _dealt(n, batch, world, drop_last, seed=3, epoch=2):
    """The standard loop's batches of one epoch on each rank, dealt by Lightning's own distributed wrapper."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper

    sampler = BatchSampler(EpochShuffle(n, seed, lambda: epoch), batch, drop_last=drop_last)
    if world == 1:
        return [list(sampler)]
    return [list(DistributedSamplerWrapper(sampler, num_replicas=world, rank=r, shuffle=False)) for r in range(world)]


@pytest.mark.parametrize("n,batch,world", [(1050, 100, 1), (1050, 100, 3), (1565, 100, 2), (1000, 100, 3),
                                           (60_000, 128, 1), (90, 100, 1), (90, 100, 2)])
@pytest.mark.parametrize("drop_last", [True, False])
def test_batch_plan_counts_the_loaders_batches_on_every_rank(n, batch, world, drop_last):
    if drop_last and batch > n:
        return  # refused by the data module (tested below)
    dealt = _dealt(n, batch, world, drop_last)
    plan = BatchPlan(n, batch, world, drop_last)
    assert plan.steps_per_epoch == len(dealt[0])
    for s in range(plan.steps_per_epoch):
        assert plan.step_samples(s) == sum(len(d[s]) for d in dealt)
        assert [plan.rank_batch_len(s, r) for r in range(world)] == [len(d[s]) for d in dealt]
    assert plan.samples_per_epoch == sum(len(b) for d in dealt for b in d)
    if world == 1:  # one process: every image once (drop_last=false), or all but n mod M (true)
        assert plan.samples_per_epoch == (n if not drop_last else n - n % batch)
    # the fast path's index table holds the same batches, a smaller one as the first indices of its row
    for r in range(world):
        table = epoch_batches(n, batch, 3, 2, world, r, drop_last)
        assert table.shape == (plan.steps_per_epoch, batch)
        assert [table[s][: plan.rank_batch_len(s, r)].tolist() for s in range(len(table))] == dealt[r]


def test_batch_plan_by_hand():
    # MNIST as pytorch/examples trains it: 60,000 images in 469 steps of 128, the last of 96
    plan = BatchPlan(60_000, 128, drop_last=False)
    assert (plan.steps_per_epoch, plan.step_samples(468), plan.samples_per_epoch) == (469, 96, 60_000)
    assert plan.samples(469) == 60_000 and plan.samples(470) == 60_128 and plan.samples(468) == 59_904
    assert plan.first_step_reaching(59_905) == 469 and plan.first_step_reaching(60_000) == 469
    assert plan.first_step_reaching(60_001) == 470 and plan.first_step_reaching(0) == 0
    assert plan.describe() == "steps of 128, each epoch's last of 96 (469 per epoch, data.drop_last=false)"
    dropped = BatchPlan(60_000, 128)
    assert (dropped.steps_per_epoch, dropped.samples_per_epoch, dropped.describe()) == (468, 59_904, "steps of 128")
    # Frey Face's 1,565 training frames on 2 ranks: 7 steps of 2 x 100, then batches 14 (100) and 15 (65)
    ddp = BatchPlan(1565, 100, world=2, drop_last=False)
    assert (ddp.steps_per_epoch, ddp.step_samples(7), ddp.samples_per_epoch) == (8, 165, 1565)
    for samples in range(0, 5000, 37):  # the fewest steps that reach a number of samples
        steps = ddp.first_step_reaching(samples)
        assert ddp.samples(steps) >= samples and (steps == 0 or ddp.samples(steps - 1) < samples)


def test_an_epochs_smaller_last_step_is_a_chunk_of_its_own():
    plan = BatchPlan(1050, 100, drop_last=False)  # 11 steps per epoch, the last of 50
    curve = ElboCurve(points_per_decade=4, start=300)
    stops = StopPoints(plan=plan, steps_per_call=64, max_steps=40, curves=(curve,))
    chunks = [c for e in range(4) for c in stops.chunks(e, e * 11)]
    assert sum(c.stop - c.start for c in chunks) == 40
    lasts = [c for c in chunks if c.stop == 11]
    assert len(lasts) == 3 and all(c.start == 10 for c in lasts)  # epochs 0-2 end in a one-step chunk
    ends = {c.epoch * 11 + c.stop for c in chunks}
    for i in range(6):  # every curve point is reached at a chunk's end, at the standard loop's step
        point = curve.grid_point(i)
        if point <= plan.samples(40):
            assert plan.first_step_reaching(point) in ends, point


# -- through Lightning: the two loops ----------------------------------------------------------------------
@pytest.mark.parametrize("model", ["aevb", "wake_sleep"])
def test_fast_and_standard_loops_agree_step_by_step_with_the_last_batch(mirror, model):
    """1,050 training images in batches of 100, three epochs: 33 steps, 3,150 samples on both loops, the same
    losses at every step (the 11th step of each epoch trains on 50 images) and the same parameters."""
    from test_fast import _fit

    args = [f"data.mirror={mirror}", "data.train_size=1050", "data.drop_last=false", f"model={model}",
            "model.latent_dim=5"]
    standard, std_model, std_trainer = _fit(False, 33, args)
    fast, fast_model, trainer = _fit(True, 33, args)
    assert trainer.global_step == std_trainer.global_step == 33 and trainer.num_training_batches == 11
    assert fast_model.samples_seen == std_model.samples_seen == 3 * 1050
    if standard is not None:  # (wake-sleep's standard step returns no loss to record)
        assert len(standard) == len(fast) == 33
        torch.testing.assert_close(fast, standard, rtol=LOSS_RTOL, atol=0)
    for (name, p), q in zip(std_model.named_parameters(), fast_model.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=name)
    a, b = float(std_trainer.callback_metrics["train/elbo_running"]), float(trainer.callback_metrics["train/elbo_running"])
    assert abs(a - b) < 1e-3 * abs(a), (a, b)  # the running train ELBO weighs the 50-image step by its 50


FREY = ["data=frey_face", "model.latent_dim=5", "logger=csv", "callbacks.progress_bar=null", "data.drop_last=false"]


def test_budget_curve_and_test_schedule_count_the_last_batch(mirror, tmp_path):
    """Frey Face's 1,565 training frames: 16 steps per epoch (the last of 65). A 4,000-sample budget is 41 steps
    (2 epochs and 9 steps, 4,030 samples); the per-epoch test ELBO lands at 1,565 and 3,130 samples."""
    runs = {}
    for fast in ("true", "false"):
        proc = run_cli(*FREY, "max_samples=4000", "callbacks.test_every_n_epochs=1", f"fast.enabled={fast}",
                       "callbacks.elbo_curve.start=1000", "callbacks.elbo_curve.points_per_decade=4",
                       f"hydra.run.dir={tmp_path / fast}", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("budget: 4,000 training samples = 41 steps of 100, each epoch's last of 65 (16 per epoch, "
                "data.drop_last=false)") in proc.stdout
        runs[fast] = tmp_path / fast
    summaries = [json.loads((runs[k] / "summary.json").read_text()) for k in ("true", "false")]
    for s in summaries:
        assert s["samples_seen"] == 4030 and s["global_step"] == 41
    for key in ("train/elbo", "val/elbo", "test/elbo"):
        assert summaries[0][key] == pytest.approx(summaries[1][key], abs=0.05), key
    tests = [(runs[k] / "test_curve.csv").read_text().splitlines() for k in ("true", "false")]
    assert [ln.split(",")[:2] for ln in tests[0][1:]] == [["1565", "1"], ["3130", "2"]]
    assert [ln.split(",")[:2] for ln in tests[1][1:]] == [["1565", "1"], ["3130", "2"]]
    curves = [(runs[k] / "curve.csv").read_text().splitlines() for k in ("true", "false")]
    assert [ln.split(",")[0] for ln in curves[0]] == [ln.split(",")[0] for ln in curves[1]]
    assert len(curves[0]) >= 4


def test_packed_members_equal_their_single_runs_with_the_last_batch(mirror, tmp_path):
    """Two members of one shape: their full steps run side by side, each epoch's last (50 images) alone."""
    env = {"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}
    args = ["max_samples=4000", "data.train_size=1050", "data.drop_last=false", "logger=csv",
            "callbacks.progress_bar=null"]
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=packed", "seed=0,1", *args, f"hydra.sweep.dir={sweep}", env_extra=env,
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if "trained together" in ln]
    assert line.endswith(" of their 84 training steps ran side by side"), line  # 2 runs x 42 steps
    single = tmp_path / "single"
    one = run_cli("seed=1", *args, f"hydra.run.dir={single}", env_extra=env)
    assert one.returncode == 0, one.stderr[-2000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (single, sweep / "1"))
    assert a["samples_seen"] == b["samples_seen"] == 3 * 1050 + 900 and a["global_step"] == b["global_step"] == 42
    for key in ("train/elbo", "val/elbo", "test/elbo"):
        assert abs(a[key] - b[key]) < 0.01, (key, a[key], b[key])


@pytest.mark.slow  # ~40 s: four aevb-train processes
@pytest.mark.parametrize("fast", ["false", "true"])
def test_ddp_two_cpu_processes_count_the_last_batch_of_each_rank(mirror, tmp_path, fast):
    """2 gloo ranks on Frey Face: 8 steps per epoch, the last of 100 + 65. Two epochs: 16 steps, 3,130 samples,
    counted the same on both ranks, and the ranks end with identical parameters."""
    probe = tmp_path / "probe"
    proc = run_cli(*FREY, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "max_samples=3130",
                   f"fast.enabled={fast}", "+callbacks.ddp_probe._target_=ddp_probe.DdpProbe",
                   f"+callbacks.ddp_probe.out_dir={probe}", f"hydra.run.dir={tmp_path / 'run'}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror),
                              "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                             str(Path(__file__).parent)])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "= 16 steps of 200, each epoch's last of 165 (8 per epoch" in proc.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["samples_seen"] == 3130 and summary["global_step"] == 16
    r0, r1 = (torch.load(probe / f"rank{r}.pt") for r in (0, 1))
    assert r0["samples_seen"] == r1["samples_seen"] == 3130 and r0["global_step"] == r1["global_step"] == 16
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), f"{name} differs between the ranks"


def test_drop_last_must_be_a_boolean_and_a_batch_larger_than_the_data_needs_it_false(mirror, tmp_path):
    env = {"AEVB_DATA_MIRROR": str(mirror)}
    bad = run_cli("data.drop_last=sometimes", f"hydra.run.dir={tmp_path / 'a'}", env_extra=env)
    assert_one_line_error(bad, "data.drop_last must be true or false, got 'sometimes'")
    big = run_cli("data.train_size=90", "max_samples=900", f"hydra.run.dir={tmp_path / 'b'}", env_extra=env)
    assert_one_line_error(big, "data.batch_size (100) is larger than the training set (90)")
    ok = run_cli("data.train_size=90", "data.drop_last=false", "max_samples=900", "logger=csv",
                 "callbacks.progress_bar=null", f"hydra.run.dir={tmp_path / 'c'}", env_extra=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["samples_seen"] == 900 and summary["global_step"] == 10  # 10 epochs of one 90-image batch
