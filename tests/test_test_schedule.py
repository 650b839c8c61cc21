"""The test ELBO on a schedule (callbacks.test_every_n_epochs): rows after every N-th whole epoch, test/elbo in
the loggers, and not one training number changed by it, on the fast path and the standard loop (real MNIST)."""

from __future__ import annotations

import csv
import json

import pytest

from helpers import assert_one_line_error, run_cli

# 1,000 training images, batch 100: 10 steps per epoch; 5,500 samples = 5 whole epochs and half a sixth
ARGS = ("data.train_size=1000", "max_samples=5500", "logger=csv", "callbacks.progress_bar=null", "seed=3")
FIELDS = ("train/elbo", "val/elbo", "test/elbo", "train/kl", "test/recon", "samples_seen", "global_step", "epochs")


def _run(mirror, run_dir, *extra):
    proc = run_cli(*ARGS, *extra, f"hydra.run.dir={run_dir}", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "summary.json").read_text())


@pytest.mark.parametrize("loop", ["fast", "standard"])
def test_the_test_elbo_every_two_epochs_is_a_curve_and_changes_no_training_number(mirror, tmp_path, loop):
    flags = () if loop == "fast" else ("fast.enabled=false",)
    plain = _run(mirror, tmp_path / "plain", *flags)
    scheduled = _run(mirror, tmp_path / "scheduled", *flags, "callbacks.test_every_n_epochs=2")
    for key in FIELDS:
        assert scheduled[key] == plain[key], key  # exactly: the evaluations ran on forked random streams
    assert (tmp_path / "scheduled" / "curve.csv").read_text() == (tmp_path / "plain" / "curve.csv").read_text()
    assert not (tmp_path / "plain" / "test_curve.csv").exists()

    rows = list(csv.DictReader((tmp_path / "scheduled" / "test_curve.csv").open()))
    assert [(int(r["epoch"]), int(r["samples_seen"]), int(r["test_n"])) for r in rows] == [
        (2, 2000, 10_000), (4, 4000, 10_000)]  # whole epochs only: not the budget's half epoch
    elbos = [float(r["test_elbo"]) for r in rows]
    assert -545 < elbos[0] < elbos[1] < -150  # it learns between the two points
    logged = [r for r in csv.DictReader((tmp_path / "scheduled" / "csv" / "metrics.csv").open()) if r.get("test/elbo")]
    assert [(int(float(r["epoch"])), round(float(r["test/elbo"]), 4)) for r in logged] == [
        (2, round(elbos[0], 4)), (4, round(elbos[1], 4))]


def test_a_resumed_run_keeps_its_test_rows_and_continues_them(mirror, tmp_path):
    """Stopped by its budget after 3 epochs, then resumed to 6: the rows are the uninterrupted run's rows."""
    whole = tmp_path / "whole"
    run_cli(*ARGS[:1], "max_samples=6000", *ARGS[2:], "callbacks.test_every_n_epochs=1", f"hydra.run.dir={whole}",
            env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    part = tmp_path / "part"
    common = (*ARGS[:1], *ARGS[2:], "callbacks.test_every_n_epochs=1", f"hydra.run.dir={part}")
    first = run_cli(*common, "max_samples=3000", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(*common, "max_samples=6000", f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
                    env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert again.returncode == 0, again.stderr[-3000:]
    got = list(csv.DictReader((part / "test_curve.csv").open()))
    want = list(csv.DictReader((whole / "test_curve.csv").open()))
    assert [r["epoch"] for r in got] == ["1", "2", "3", "4", "5", "6"]
    assert [r["samples_seen"] for r in got] == [r["samples_seen"] for r in want]
    for a, b in zip(got, want):
        assert float(a["test_elbo"]) == pytest.approx(float(b["test_elbo"]), abs=0.05)


def test_a_bad_schedule_is_refused_in_one_line(mirror, tmp_path):
    proc = run_cli("callbacks.test_every_n_epochs=-1", f"hydra.run.dir={tmp_path / 'run'}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert_one_line_error(proc, "callbacks.test_every_n_epochs must be a whole number >= 0 (0: never), got -1")
    assert not (tmp_path / "run").exists()  # answered before the run began
