"""Multirun sweeps: through submitit's local launcher, one failing job does not cost the others."""

from __future__ import annotations

import csv
import json

import pytest
from helpers import run_cli

TINY = ["model.latent_dim=2", "net.encoder.hidden_dim=32", "net.decoder.hidden_dim=32", "logger=csv",
        "callbacks.elbo_curve.start=500", "callbacks.elbo_curve.points_per_decade=2"]


def test_tiny_fig2_sweep_through_submitit_local_gives_summaries_and_figure(mirror, tmp_path):
    from aevb.figures_cli import main as figures

    sweep = tmp_path / "sweep"
    # the launching process sees GPUs "3,5" (made up: trainer is cpu); submitit alone would hide them from the jobs
    proc = run_cli("-m", "experiment=fig2_frey", "max_samples=2000", *TINY, "hydra/launcher=submitit_local",
                   f"hydra.sweep.dir={sweep}", env_extra={"AEVB_DATA_MIRROR": str(mirror), "CUDA_VISIBLE_DEVICES": "3,5"},
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    models = {}
    for job in ("0", "1"):  # model in {aevb, wake_sleep}
        summary = json.loads((sweep / job / "summary.json").read_text())
        assert summary["samples_seen"] == 2000 and summary["dataset"] == "frey_face"
        assert summary["cuda_visible_devices"] == "3,5"  # the jobs see the launching process's GPUs
        models[summary["model"]] = summary["test/elbo"]
        rows = list(csv.DictReader((sweep / job / "curve.csv").open()))
        assert [int(r["samples_seen"]) for r in rows] == [500, 1600, 2000]  # first step at or past 500 * 10^0.5 = 1581
    assert set(models) == {"AEVB", "WakeSleep"}
    assert "2 of 2 jobs finished" in proc.stdout and (sweep / "results.md").is_file()

    figures(["fig2", str(sweep), "--out", str(tmp_path / "fig")])
    png = tmp_path / "fig" / "fig2_frey_face.png"
    assert png.stat().st_size > 10_000 and (tmp_path / "fig" / "fig2_frey_face.pdf").is_file()


@pytest.mark.parametrize("launcher", [
    pytest.param([], id="basic"),
    pytest.param(["hydra/launcher=gpu_parallel", "hydra.launcher.gpus=[0]", "hydra.launcher.runs_per_gpu=2"],
                 id="gpu_parallel", marks=pytest.mark.slow),  # the same record, written in the job's own process
])
def test_a_failing_job_does_not_stop_the_sweep(mirror, tmp_path, launcher):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=fig2_frey", "model=aevb", "max_samples=1000", *TINY,
                   "data.binarize=sometimes,none", f"hydra.sweep.dir={sweep}", *launcher,
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 1  # the sweep finishes, and its exit status says a job failed
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert failed["status"] == "failed" and "data.binarize" in failed["error"]
    assert json.loads((sweep / "1" / "summary.json").read_text())["samples_seen"] == 1000
    table = list(csv.DictReader((sweep / "results.csv").open()))
    assert [r["status"] for r in table] == ["failed", "ok"]
    assert "1 sweep job(s) failed: 0" in proc.stderr and "Traceback" not in proc.stderr
