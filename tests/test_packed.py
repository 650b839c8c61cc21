"""Packed sweeps (hydra/launcher=packed): each member trains as its single run would, in its own run folder.

Tolerances. A packed member runs the single run's operations on the same batches and the same
noise (its own generator, in its run's state), but as batched kernels (vmap turns each matmul
into a batched one) whose sums are taken in another order. In float64 the two agree to rounding
(1e-14 after one step; tested to 1e-9 after 30). Training then amplifies any perturbation, as it
amplifies a change of seed: at N_z = 200, batch 100, a float64 difference of 1e-14 grows to 3e-8
by step 50 and 0.05 by step 100, and Adagrad's first steps (lr * g / |g|) turn rounding in
near-zero gradients into whole-step differences. So in float32 long runs agree in distribution,
not bitwise (at 20,000 samples on Figure 2's MNIST sweep: 0.0-0.4 nats for AEVB, up to 3 nats for
wake-sleep, whose runs differ by tens of nats between seeds). The end-to-end tests below use small
runs (N_z 3 and 5, 200 steps) where float32 runs still agree closely (observed 0.0012 nats in
summary.json, 0.07 at a curve point): we allow 0.01 and 0.1 nats, and require the same curve points.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import pytest
import torch

from aevb.fast.step import Step, WakeSleepStep
from aevb.packed.launch import plan_packs
from aevb.packed.steps import PackedSteps
from helpers import assert_one_line_error, compose, run_cli

SUMMARY_TOL = 0.01  # nats per datapoint
CURVE_TOL = 0.1
TINY = ["max_samples=20000", "data.train_size=2000", "logger=csv", "callbacks.progress_bar=null"]


# -- the padding of latent sizes ----------------------------------------------------------------------------
def _member(latent: int, seed: int, data: torch.Tensor, method: str = "aevb", hidden: int = 32):
    from aevb.building import build

    torch.manual_seed(seed)
    cfg = compose([f"model={method}", "model.latent_dim=%d" % latent, f"net.encoder.hidden_dim={hidden}",
                   f"net.decoder.hidden_dim={hidden}", "data.train_size=2000", f"seed={seed}"])
    _, model = build(cfg, data_module=_Data(data), run_config={})
    model.to(data.dtype)
    opt = model.configure_optimizers()
    step = (WakeSleepStep if method == "wake_sleep" else Step)(model, data, opt, binarize=False)
    return SimpleNamespace(model=model, base_step=step)


class _Data:
    """The data module build() needs: shapes and sizes of a fixed tensor of real images."""

    name, batch_size = "mnist", 50

    def __init__(self, data):
        self.data_shape, self.n_train = tuple(data.shape[1:]), len(data)

    def setup(self):
        pass


@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_padded_latent_units_carry_no_signal_kl_or_gradient(mnist, method):
    """N_z = 2 packed with N_z = 6: the small member's steps equal its own single steps (same noise), its
    padded weights and their Adagrad sums stay exactly 0 (so no step ever gave them a gradient), and
    its KL is its own units' KL (wake-sleep: also its dreams' log q(z|x)).

    In float64, so that "equal" is exact up to rounding whatever the thread count: in float32 the batched
    kernels (vmap's bmm) and the single run's mm block their sums differently, and differently again with
    2 threads than with 1; Adagrad's first steps (lr * g / |g|) then turn that rounding in near-zero
    gradients into visible steps (20 steps, float32: 7e-6 with 1 thread, 2.5e-5 with 2; float64: 1e-14)."""
    data = mnist.splits["train"][:500].double()
    steps, batch = 20, 50
    rows = torch.stack([torch.randint(0, 500, (steps, batch), generator=torch.Generator().manual_seed(s))
                        for s in (0, 1)])
    small, big = _member(2, 0, data, method), _member(6, 1, data, method)
    alone = _member(2, 0, data, method)  # the same initial state as `small`
    torch.testing.assert_close(list(alone.model.parameters()), list(small.model.parameters()), rtol=0, atol=0)

    gens = [torch.Generator().manual_seed(100), torch.Generator().manual_seed(101)]
    packed = PackedSteps([small, big])
    n, totals = packed.run(rows, data, False, gens, stop_now=lambda: False)
    assert n == steps

    torch.manual_seed(100)  # the single run draws the same stream from the global generator
    for r in rows[0]:
        alone.base_step(r)
    for (name, p), q in zip(alone.model.named_parameters(), small.model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-10, msg=f"{name}: packed N_z=2 member != single run")
    alone_sums = alone.base_step.sums  # ELBO, reconstruction, KL summed over the steps
    torch.testing.assert_close(totals[0].double(), alone_sums.double(), rtol=1e-6, atol=1e-3)  # float32 sums
    assert totals[0][2] > 0, "the small member's KL is its own units' (positive), nothing from padding"

    for name, shape, p, s in zip(packed.names, packed.shapes, packed.stacked_params, packed.stacked_sums):
        own = dict(small.model.named_parameters())[name].shape
        if own == shape:
            continue
        pad = torch.ones(shape, dtype=torch.bool)
        pad[tuple(slice(0, k) for k in own)] = False
        assert pad.any()
        assert bool((p[0][pad] == 0).all()), f"{name}: padded weights moved"
        assert bool((s[0][pad] == 0).all()), f"{name}: padded weights got gradient"
    assert totals[1][2] > totals[0][2], "the bigger member's KL has its 6 units"


@pytest.mark.parametrize("method", ["aevb", "wake_sleep"])
def test_packed_member_equals_its_single_run_to_float64_rounding(mnist, method):
    """In float64 the packed steps are the single run's steps up to rounding: after 30 steps of the paper's MLP
    (N_z = 200 packed with N_z = 3) the parameters agree to 1e-9. (In float32 the same rounding, amplified by
    training's own sensitivity to perturbations, separates long runs: see the module docstring.)"""
    data = mnist.splits["train"][:1000].double()
    rows = torch.randint(0, 1000, (2, 30, 100), generator=torch.Generator().manual_seed(0))
    small, big = _member(3, 0, data, method, hidden=500), _member(200, 1, data, method, hidden=500)
    alone = _member(200, 1, data, method, hidden=500)
    gens = [torch.Generator().manual_seed(7), torch.Generator().manual_seed(8)]
    PackedSteps([small, big]).run(rows, data, False, gens, stop_now=lambda: False)
    torch.manual_seed(8)
    for r in rows[1]:
        alone.base_step(r)
    gap = max(float((p - q).abs().max()) for p, q in zip(alone.model.parameters(), big.model.parameters()))
    assert gap < 1e-9, f"packed N_z=200 member differs from its single run by {gap:.1e}"
    assert max(float(p.abs().max()) for p in big.model.parameters()) > 0.1  # it trained (init std 0.01)


# -- which jobs share a pack ---------------------------------------------------------------------------------
def test_plan_packs_groups_what_shares_a_program():
    jobs = [["seed=0"], ["seed=1", "model.latent_dim=200"], ["model.optimizer.lr=0.1"], ["model=wake_sleep"],
            ["model=wake_sleep", "seed=3", "model.latent_dim=5"], ["net=cnn", "model.latent_dim=5"],
            ["net=cnn", "model.latent_dim=6"], ["data=frey_face"], ["fast.enabled=false"], ["seed=2"]]
    configs = [compose(j) for j in jobs]
    units, alone = plan_packs(configs, max_pack=3)
    assert [0, 1, 2] in units, "seed, latent size (MLP pads exactly) and learning rate differ within a pack"
    assert [9] in units, "max_pack=3 starts a second pack"
    assert [3, 4] in units, "wake-sleep packs with wake-sleep"
    assert [5] in units and [6] in units, "CNN latents do not pad exactly: different N_z, different packs"
    assert [7] in units and [8] in units and alone == {8: "fast.enabled=false"}
    assert sorted(p for u in units for p in u) == list(range(len(jobs)))


def test_bad_pack_size_is_one_line(tmp_path):
    proc = run_cli("-m", "hydra/launcher=packed", "hydra.launcher.max_pack=0", "seed=0,1", *TINY,
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert_one_line_error(proc, "hydra.launcher.max_pack must be a positive integer")


# -- a packed sweep against its single runs ---------------------------------------------------------------------
def _curve(path):
    with open(path) as f:
        return list(csv.DictReader(f))


RUNS = {"aevb_mnist": TINY,  # with hydra.launcher.pad_latents=true below: N_z 3 and 5 share one program (padded)
        "wake_sleep_frey": ["model=wake_sleep", "data=frey_face", "max_samples=20000", "logger=csv",
                            "callbacks.progress_bar=null"]}  # pad_latents=auto: on CPU, one program per N_z


@pytest.mark.e2e  # ~110 s for both: a 4-job packed sweep and two single runs each
@pytest.mark.parametrize("runs", sorted(RUNS))
def test_packed_sweep_equals_single_runs(mirror, tmp_path, runs):
    env = {"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    args = RUNS[runs]
    pad = ["hydra.launcher.pad_latents=true"] if runs == "aevb_mnist" else []
    proc = run_cli("-m", "hydra/launcher=packed", "seed=0,1", "model.latent_dim=3,5", *args, *pad,
                   f"hydra.sweep.dir={sweep}", env_extra=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "jobs 0-3 trained together in one process:" in proc.stdout and "none of their" not in proc.stdout
    assert all(f"[job {j}] epoch" in proc.stdout for j in range(4)), "each member's report lines say whose they are"
    results = (sweep / "results.md").read_text()
    assert "4 jobs: 4 ok, 0 failed" in results
    for job in range(4):  # every member is a normal run folder
        d = sweep / str(job)
        for name in ("summary.json", "curve.csv", "config_resolved.yaml", ".hydra/config.yaml",
                     "checkpoints/last.ckpt", "checkpoints/best.ckpt", "csv/metrics.csv"):
            assert (d / name).is_file(), f"job {job}: {name} missing"

    for seed, latent, job in ((0, 3, 0), (1, 5, 3)):  # the sweep's order: seed varies slowest
        single = tmp_path / f"single_{seed}_{latent}"
        one = run_cli(f"seed={seed}", f"model.latent_dim={latent}", *args, f"hydra.run.dir={single}",
                      env_extra=env)
        assert one.returncode == 0, one.stderr[-2000:]
        a, b = (json.loads((d / "summary.json").read_text()) for d in (single, sweep / str(job)))
        assert b["latent_dim"] == latent and b["samples_seen"] == a["samples_seen"] == 20000
        assert b["global_step"] == a["global_step"]
        for key in ("train/elbo", "val/elbo", "test/elbo", "test/kl"):
            assert abs(a[key] - b[key]) < SUMMARY_TOL, f"{key}: single {a[key]} packed {b[key]}"
        ca, cb = _curve(single / "curve.csv"), _curve(sweep / str(job) / "curve.csv")
        assert [r["samples_seen"] for r in ca] == [r["samples_seen"] for r in cb] and len(ca) >= 3
        for ra, rb in zip(ca, cb):
            for key in ("train_elbo", "test_elbo"):
                assert abs(float(ra[key]) - float(rb[key])) < CURVE_TOL, (ra, rb)

    from aevb.checkpoints import load_model

    model, _, _ = load_model(sweep / "0" / "checkpoints" / "last.ckpt")  # what aevb-eval and resume read
    assert model.latent_dim == 3 and model.samples_seen == 20000


def test_diverging_member_fails_alone(mirror, tmp_path):
    """lr = 1e30 makes one member's ELBO infinite at its first steps; it is recorded as failed, the other finishes."""
    env = {"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=packed", "model.optimizer.lr=0.02,1e30", "max_samples=5000",
                   "data.train_size=1000", "logger=csv", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}",
                   env_extra=env, timeout=600)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "jobs 0, 1 trained together in one process:" in proc.stdout
    assert (sweep / "0" / "summary.json").is_file() and not (sweep / "1" / "summary.json").exists()
    failed = json.loads((sweep / "1" / "failed.json").read_text())
    assert "diverged" in failed["error"]
    assert "1 failed" in (sweep / "results.md").read_text()


def test_each_member_has_its_own_wandb_run(mirror, tmp_path):
    """Members share a process but not a wandb run: each run folder holds its own offline run, with its own
    config, name and final summary."""
    import wandb_records

    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=packed", "model.latent_dim=2,4", "max_samples=2000", "data.train_size=1000",
                   "logger=wandb", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = set()
    for job, latent in ((0, 2), (1, 4)):
        (run,) = (sweep / str(job) / "wandb").glob("offline-run-*")
        ids.add(run.name)
        assert wandb_records.config(run)["model"]["latent_dim"] == latent
        assert wandb_records.run_record(run).display_name.startswith(f"aevb Nz={latent}")
        summary = json.loads((sweep / str(job) / "summary.json").read_text())
        assert wandb_records.summary(run)["test/elbo"] == pytest.approx(summary["test/elbo"])
    assert len(ids) == 2


@pytest.mark.e2e  # ~150 s: a packed sweep stopped, then each member resumed
def test_stop_signal_checkpoints_every_member_and_each_resumes_as_a_single_run(mirror, tmp_path):
    """SIGTERM to a pack's process (not to the sweep): every member saves last.ckpt and status.json, the
    sweep reports them interrupted, not failed (exit 143, one line with each resume command, no
    failed.json); a member then resumes alone from its own checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    sweep = tmp_path / "sweep"
    args = ["max_samples=300000", "data.train_size=1000", "logger=csv", "callbacks.progress_bar=null"]
    exe = str(Path(sys.executable).with_name("aevb-train"))
    launcher = subprocess.Popen([exe, "-m", "hydra/launcher=packed", "seed=0,1", *args, f"hydra.sweep.dir={sweep}"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not all((sweep / j / "checkpoints" / "last.ckpt").exists() for j in "01"):  # both validated once
            assert time.time() < deadline and launcher.poll() is None, "the pack did not start training"
            time.sleep(1)
        pack = subprocess.run(["pgrep", "-P", str(launcher.pid), "-f", "spawn_main"], capture_output=True,
                              text=True).stdout.split()  # (not multiprocessing's resource tracker)
        assert len(pack) == 1, pack
        os.kill(int(pack[0]), signal.SIGTERM)
        _, err = launcher.communicate(timeout=300)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("aevb-train: sweep ended with job(s) interrupted by SIGTERM"), last
    assert "job 0: " in last and "job 1: " in last and last.count("ckpt_path=") == 2, last
    for job in "01":
        assert not (sweep / job / "failed.json").exists()
        status = json.loads((sweep / job / "status.json").read_text())
        assert status["status"] == "interrupted" and status["signal"] == "SIGTERM"
        assert 0 < status["samples_seen"] < 300000 and Path(status["checkpoint"]).is_file()
        assert not (sweep / job / "summary.json").exists()

    status = json.loads((sweep / "0" / "status.json").read_text())
    again = run_cli("seed=0", *args, f"ckpt_path={status['checkpoint']}", f"hydra.run.dir={sweep / '0'}",
                    env_extra={"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["samples_seen"] == 300000 and summary["global_step"] == 3000
    curve = _curve(sweep / "0" / "curve.csv")
    assert [int(r["samples_seen"]) for r in curve] == sorted({int(r["samples_seen"]) for r in curve})


# -- what a pack says ----------------------------------------------------------------------------------------
def test_pack_line_says_which_jobs_trained_together_in_plain_words():
    from aevb.packed.launch import job_list, pack_line

    assert job_list([3, 0, 1, 2]) == "0-3" and job_list([0, 1]) == "0, 1" and job_list([0, 2, 3, 4, 9]) == "0, 2-4, 9"
    line = pack_line([0, 1, 2, 3], together=790, alone=10)
    assert line == "jobs 0-3 trained together in one process: 790 of their 800 training steps ran side by side"
    assert "none of their training steps" in pack_line([4, 5], together=0, alone=40)
    many = pack_line(list(range(0, 32, 2)), together=3200, alone=0)  # 16 scattered jobs: wrapped, never wider
    assert all(len(ln) <= 100 for ln in many.splitlines()) and "3,200 of their 3,200" in many
    for jargon in ("pack of", "chunk", "packed"):
        assert jargon not in line + many


def test_pack_counts_the_steps_its_members_ran_side_by_side(mirror, tmp_path):
    """Two members of one shape: after Adagrad's warm-up their steps run as one program; the pack's counts
    (the steps of both runs, together and alone) add up to both runs' budgets."""
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "hydra/launcher=packed", "seed=0,1", "max_samples=5000", "data.train_size=1000",
                   "logger=csv", "callbacks.progress_bar=null", f"hydra.sweep.dir={sweep}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (line,) = [ln for ln in proc.stdout.splitlines() if "trained together" in ln]
    assert line.startswith("jobs 0, 1 trained together in one process: ") and line.endswith(
        " of their 100 training steps ran side by side"), line  # 2 runs x 50 steps
    assert int(line.split(": ")[1].split(" of")[0]) > 0
