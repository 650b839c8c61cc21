"""data.val_size=0: every training image is trained on and nothing is validated (real MNIST and Frey Face,
through aevb-train): no val ELBO anywhere, best.ckpt the final model, checkpoints at epoch ends, both loops
the same, and a callback that would wait for a val metric refused in one line."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from helpers import assert_one_line_error, run_cli

ENV = lambda mirror: {"AEVB_DATA_MIRROR": str(mirror)}  # noqa: E731
# Frey Face without a val split: 1,765 training frames, batch 100: 17 steps per epoch; 4,000 samples = 40 steps
FREY = ("data=frey_face", "data.val_size=0", "max_samples=4000", "logger=csv", "callbacks.progress_bar=null")


@pytest.fixture(scope="module")
def frey_runs(mirror, tmp_path_factory):
    out = {}
    for loop, flags in (("fast", ()), ("standard", ("fast.enabled=false",))):
        run_dir = tmp_path_factory.mktemp(f"noval_{loop}")
        proc = run_cli(*FREY, *flags, f"hydra.run.dir={run_dir}", env_extra=ENV(mirror))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[loop] = run_dir, proc
    return out


def test_every_training_frame_is_trained_on_and_no_val_elbo_is_printed(frey_runs):
    run_dir, proc = frey_runs["fast"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/elbo"] is None and summary["val/n_datapoints"] == 0
    assert summary["train/n_datapoints"] == 1765 and summary["test/n_datapoints"] == 200  # 1965 - 200 test frames
    assert summary["samples_seen"] == 4000 and summary["global_step"] == 40 and summary["epochs"] == 3  # (Lightning counts the begun one)
    assert isinstance(summary["test/elbo"], float) and isinstance(summary["train/elbo"], float)
    assert "val ELBO" not in proc.stdout  # no validation line, no val number in the final report
    assert "val                  none (data.val_size=0" in proc.stdout
    assert "best.ckpt: the final model, same as last.ckpt (step 40); no validation set" in proc.stdout
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    assert not any(r.get("val/elbo") for r in rows) and any(r.get("final/test/elbo") for r in rows)


def test_best_is_the_final_model_and_both_loops_agree(frey_runs):
    sums = {}
    for loop, (run_dir, _) in frey_runs.items():
        ckpt = run_dir / "checkpoints"
        best, last = (torch.load(ckpt / f, map_location="cpu", weights_only=False) for f in ("best.ckpt", "last.ckpt"))
        assert best["global_step"] == last["global_step"] == 40
        for key, value in last["state_dict"].items():
            assert torch.equal(best["state_dict"][key], value), key
        sums[loop] = json.loads((run_dir / "summary.json").read_text())
    for key in ("samples_seen", "global_step", "epochs"):
        assert sums["fast"][key] == sums["standard"][key], key
    assert sums["fast"]["test/elbo"] == pytest.approx(sums["standard"]["test/elbo"], abs=0.05)


@pytest.mark.parametrize("loop", ["fast", "standard"])
def test_without_validation_a_run_checkpoints_at_each_epoch_end_and_a_kill_there_resumes_exactly(
        mirror, tmp_path, loop):
    """Nothing validates, so the epoch end checkpoints: SIGKILL right after the first epoch's end (step 17),
    then the README's resume, ends on every field of the uninterrupted run."""
    import os
    import signal
    from pathlib import Path

    flags = () if loop == "fast" else ("fast.enabled=false",)
    env = {**ENV(mirror), "PYTHONPATH": os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parent), os.environ.get("PYTHONPATH", "")) if p)}
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert run_cli(*FREY, *flags, f"hydra.run.dir={whole}", env_extra=env).returncode == 0
    killed = run_cli(*FREY, *flags, f"hydra.run.dir={part}", "+callbacks.stop._target_=kill_callbacks.SignalAt",
                     "+callbacks.stop.step=17", "+callbacks.stop.sig=SIGKILL", "+callbacks.stop.where=next_batch",
                     env_extra=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(part / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 17
    again = run_cli(*FREY, *flags, f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={part}",
                    env_extra=env)
    assert again.returncode == 0, again.stderr[-3000:]
    a, b = (json.loads((d / "summary.json").read_text()) for d in (part, whole))
    for key in ("samples_seen", "global_step", "epochs", "train/elbo", "test/elbo", "val/elbo"):
        assert a[key] == b[key], key


def test_mnist_without_validation_trains_on_all_60000(mirror, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("data.val_size=0", "max_samples=600", "logger=csv", "callbacks.progress_bar=null", f"hydra.run.dir={run_dir}",
                   env_extra=ENV(mirror))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "budget: 600 training samples = 6 steps of 100" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["val/elbo"] is None and summary["test/n_datapoints"] == 10_000
    eval_val = run_cli(str(run_dir), "--split", "val", prog="aevb-eval", env_extra=ENV(mirror))
    assert_one_line_error(eval_val, "the val split of this run is empty (it was trained with data.val_size=0)",
                          prog="aevb-eval")


def test_a_callback_that_waits_for_a_val_metric_is_refused_in_one_line(mirror, tmp_path):
    proc = run_cli(*FREY, "+callbacks.early_stopping._target_=lightning.pytorch.callbacks.EarlyStopping",
                   "+callbacks.early_stopping.monitor=val/elbo", f"hydra.run.dir={tmp_path / 'run'}",
                   env_extra=ENV(mirror))
    assert_one_line_error(proc, "callbacks.early_stopping monitors val/elbo, but data.val_size=0 leaves no"
                                " validation set")
    assert not (tmp_path / "run").exists()
