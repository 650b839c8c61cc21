"""End to end through aevb-train on real data: it learns, writes its files, logs to wandb offline, resumes."""

from __future__ import annotations

import csv
import json
import math

import pytest

from helpers import run_cli

UNTRAINED_MNIST_ELBO = -784 * math.log(2)  # logits ~ 0 at N(0, 0.01) init: -543.4 nats per datapoint


@pytest.fixture(scope="module")
def mnist_run(mirror, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mnist_run")
    proc = run_cli("max_samples=30000", "trainer.val_check_interval=100", "logger=wandb", "callbacks.progress_bar=null",
                   "callbacks.elbo_curve.points_per_decade=2", f"hydra.run.dir={run_dir}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir, proc


def test_short_mnist_run_improves_elbo_and_writes_summary(mnist_run):
    run_dir, proc = mnist_run
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("train/elbo", "val/elbo", "test/elbo"):
        assert isinstance(summary[key], float)
        # 300 Adagrad steps take the bound from -543 to about -200 nats; demand at least 250 of that
        assert summary[key] > UNTRAINED_MNIST_ELBO + 250, (key, summary[key])
        assert summary[key] < -100  # and not a number a 30k-sample model cannot reach
    assert summary["samples_seen"] == 30_000 and summary["global_step"] == 300
    assert summary["test/n_datapoints"] == 10_000 and summary["units"] == "nats per datapoint"
    assert summary["test/elbo"] == pytest.approx(summary["test/recon"] - summary["test/kl"], abs=1e-3)
    assert "test ELBO:" in proc.stdout and "nats per datapoint" in proc.stdout
    assert "val ELBO" in proc.stdout  # per-epoch progress lines


def test_run_directory_holds_config_metrics_checkpoints_and_curve(mnist_run):
    run_dir, _ = mnist_run
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    assert "latent_dim: 20" in (run_dir / "config_resolved.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert any(r.get("val/elbo") for r in rows) and any(r.get("final/test/elbo") for r in rows)
    assert any(r.get("train/elbo_running") for r in rows) and not any(r.get("train/elbo") for r in rows)
    curve = list(csv.DictReader((run_dir / "curve.csv").open()))
    seen = [int(r["samples_seen"]) for r in curve]
    assert seen == [10_000, 30_000]  # the log grid at 2 per decade (10^4, 10^4.5 = 31,623) plus the final point
    assert float(curve[-1]["test_elbo"]) > float(curve[0]["test_elbo"])


def test_wandb_runs_offline_and_says_how_to_sync(mnist_run):
    run_dir, proc = mnist_run
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1 and any(offline_runs[0].rglob("*.wandb"))
    images = {p.name.split("_")[0] for p in (offline_runs[0] / "files" / "media").rglob("*.png")}
    assert {"samples", "reconstructions"} <= images  # the figures' pictures, per run
    assert f"wandb sync {offline_runs[0]}" in proc.stdout


def test_resume_continues_the_count_from_the_last_checkpoint(mnist_run, mirror, tmp_path):
    run_dir, _ = mnist_run
    proc = run_cli("max_samples=60000", "logger=csv", "callbacks.progress_bar=null",
                   f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={tmp_path}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = json.loads((run_dir / "summary.json").read_text())
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["samples_seen"] == 60_000 and summary["global_step"] == 600
    # the bound climbs about 10 nats from 3 to 6 x 10^4 samples here; steps of 10^4 are within its wobble
    assert summary["test/elbo"] > first["test/elbo"] + 3


def test_short_frey_face_run_improves_elbo(mirror, tmp_path):
    proc = run_cli("data=frey_face", "model.latent_dim=5", "max_samples=30000", "logger=csv", "callbacks=none",
                   f"hydra.run.dir={tmp_path}", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # at init the Gaussian decoder has variance 1 and mean 1/2: about -560 * 0.93 = -520 nats; 300 steps reach > +300
    assert summary["test/elbo"] > 300 and summary["samples_seen"] == 30_000
    assert summary["test/n_datapoints"] == 200 and summary["dataset"] == "frey_face"


@pytest.mark.slow
@pytest.mark.parametrize("args,floor", [
    (["max_samples=1000000"], -122.5),  # reference -118.7 .. -120.0 at 10^6 samples
    (["data=frey_face", "model.latent_dim=5", "max_samples=1000000"], 870.0),  # reference +911 .. +921
])
def test_paper_fidelity_at_one_million_samples(args, floor, mirror, tmp_path):
    """The mean test ELBO of seeds 0 and 1 clears the floor: single seeds spread several nats at 10^6 samples
    (MNIST seed 0 -122.6, seed 1 -120.2), so one seed is not a measurement of the implementation."""
    elbos = []
    for seed in (0, 1):
        proc = run_cli(*args, f"seed={seed}", "logger=csv", "callbacks=none", f"hydra.run.dir={tmp_path / str(seed)}",
                       env_extra={"AEVB_DATA_MIRROR": str(mirror)}, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
        elbos.append(json.loads((tmp_path / str(seed) / "summary.json").read_text())["test/elbo"])
    assert sum(elbos) / 2 > floor, elbos


def test_aevb_eval_estimates_log_px_above_the_elbo(mnist_run, tmp_path):
    run_dir, _ = mnist_run
    out = tmp_path / "eval.json"
    proc = run_cli(str(run_dir), "--k", "200", "--chunk-size", "64", "--max-datapoints", "300", "--out", str(out),
                   prog="aevb-eval", timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["n_datapoints"] == 300 and result["k"] == 200 and result["split"] == "test"
    # the importance-weighted bound is tighter than the ELBO, by more than noise at this stage of training
    assert result["elbo"] + 1.0 < result["log_px"] < 0
    assert "nats per datapoint" in proc.stdout
    bad = run_cli(str(tmp_path / "missing"), prog="aevb-eval")
    assert bad.returncode == 2 and bad.stderr.strip() == f"aevb-eval: error: checkpoint {tmp_path / 'missing'} not found"


def test_ddp_on_two_cpu_processes_counts_every_rank_and_every_datapoint_once(mirror, tmp_path):
    proc = run_cli("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data=frey_face",
                   "model.latent_dim=5", "max_samples=8000", "logger=csv", "callbacks.progress_bar=null",
                   f"hydra.run.dir={tmp_path}", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # 40 steps x 100 datapoints x 2 ranks; the 200 val/test frames in one batch per rank, none repeated
    assert summary["samples_seen"] == 8000 and summary["global_step"] == 40
    assert summary["test/n_datapoints"] == 200 and summary["test/elbo"] > 0
    assert "budget: 8,000 training samples = 40 steps of 200" in proc.stdout
