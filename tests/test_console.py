"""The console: every line fits 100 columns; the bar's samples/s and ETA; the best/last line; validation lines."""

from __future__ import annotations

import io
import re
from types import SimpleNamespace

import pytest

from aevb.checkpoints import best_line, saved_step
from aevb.console import (WIDTH, Pace, ProgressBar, budget_steps, eta_seconds, format_duration, format_rate,
                          samples_left, samples_per_second, status_text, validation_line)
from aevb.data.batches import BatchPlan
from helpers import run_cli


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trainer(global_step=0, max_steps=200, max_epochs=-1, per_epoch=20, batch=100, world=1, n=None, drop_last=True):
    n = per_epoch * batch * world if n is None else n
    return SimpleNamespace(global_step=global_step, max_steps=max_steps, max_epochs=max_epochs,
                           num_training_batches=per_epoch, world_size=world,
                           datamodule=SimpleNamespace(batch_plan=lambda w: BatchPlan(n, batch, w, drop_last)))


# -- rate and ETA ------------------------------------------------------------------------------------------
def test_rate_and_eta_from_samples_and_seconds():
    assert samples_per_second(0, 5.0) is None and samples_per_second(100, 0.0) is None
    assert samples_per_second(20_000, 4.0) == 5_000
    assert eta_seconds(30_000, 20_000, 4.0) == pytest.approx(6.0)  # 30k more at 5k/s
    assert eta_seconds(0, 20_000, 4.0) == 0.0 and eta_seconds(None, 1, 1.0) is None
    assert eta_seconds(10, 0, 0.0) is None  # no pace yet
    assert format_rate(None) == "-- samples/s" and format_rate(850) == "850 samples/s"
    assert format_rate(16_667) == "16.7k samples/s" and format_rate(1_234_567) == "1.23M samples/s"
    assert format_duration(None) == "-:--:--" and format_duration(5) == "0:00:05"
    assert format_duration(30 * 3600 + 61) == "30:01:01"


def test_budget_is_in_optimiser_steps_on_both_loops():
    # max_samples=20000 at batch 100: max_steps 200, max_epochs -1; 20 steps per epoch (2,000 training images)
    assert budget_steps(_trainer()) == 200
    assert budget_steps(_trainer(max_steps=-1, max_epochs=10)) == 200  # 10 epochs of 20 steps
    assert budget_steps(_trainer(max_steps=50, max_epochs=10)) == 50  # whichever ends first
    assert budget_steps(_trainer(max_steps=-1, max_epochs=-1)) is None
    assert budget_steps(_trainer(max_steps=-1, max_epochs=3, per_epoch=float("inf"))) is None
    assert samples_left(_trainer(global_step=120)) == 8_000
    assert samples_left(_trainer(global_step=120, world=2)) == 16_000  # samples of every rank
    assert samples_left(_trainer(global_step=250)) == 0
    # data.drop_last=false: 1,950 images in 20 steps of 100, each epoch's last of 50
    assert samples_left(_trainer(global_step=10, max_steps=40, n=1950, drop_last=False)) == 950 + 1950


def test_pace_leaves_validation_out_of_the_rate_not_of_the_eta():
    clock = Clock()
    pace = Pace(clock)
    assert pace.rate(0) is None and pace.eta(0, 100) is None
    pace.start(samples_seen=5_000)  # a resumed run: only the samples since the start count
    clock.now += 4.0
    pace.pause()  # 4 s of validation
    clock.now += 4.0
    assert pace.rate(25_000) == pytest.approx(5_000)  # frozen while validating
    pace.resume()
    assert pace.rate(25_000) == pytest.approx(5_000)  # 20k samples in 4 s of training
    assert pace.eta(25_000, 20_000) == pytest.approx(8.0)  # 20k more at 20k per 8 s of wall time


def test_bar_rate_and_eta_on_the_fast_path_where_a_batch_is_a_chunk_of_steps():
    """One Lightning batch on the fast path is a chunk of fast.steps_per_call steps: the bar's numbers come from
    the samples evaluated and the global step, which the chunk advances by all its steps, not by one."""
    clock = Clock()
    bar = ProgressBar()
    bar.pace = Pace(clock)
    module = SimpleNamespace(samples_seen=0, fast_loop=SimpleNamespace(last_chunk=None))
    trainer = _trainer(max_steps=1000, per_epoch=500)
    bar.pace.start(module.samples_seen)
    clock.now += 2.0  # one chunk of 100 steps of 100 samples in 2 s
    trainer.global_step, module.samples_seen = 100, 10_000
    assert bar.get_metrics(trainer, module) == {}
    assert bar.status == "10,000 samples  5k samples/s  ETA 0:00:18"  # 900 steps x 100 left at 5,000/s
    clock.now += 2.0
    trainer.global_step, module.samples_seen = 200, 20_000
    bar.get_metrics(trainer, module)
    assert bar.status == "20,000 samples  5k samples/s  ETA 0:00:16"


def test_bar_fits_one_line_of_100_columns_with_large_numbers():
    from lightning.pytorch.callbacks.progress.rich_progress import CustomProgress
    from rich.console import Console

    bar = ProgressBar()
    out = io.StringIO()
    progress = CustomProgress(*bar.configure_columns(None), console=Console(width=WIDTH, file=out), auto_refresh=False)
    bar.progress = progress
    bar.train_progress_bar_id = progress.add_task("Epoch 1999/1999", total=5000, completed=4321)
    bar.status = status_text(100_000_000, 1.23e6, 30 * 3600.0, -1234.5)
    progress.console.print(progress.get_renderable())
    lines = out.getvalue().rstrip("\n").splitlines()
    assert len(lines) == 1 and len(lines[0]) <= WIDTH, lines
    assert "4321/5000" in lines[0] and "1.23M samples/s" in lines[0] and "ETA 30:00:00" in lines[0]


# -- lines -------------------------------------------------------------------------------------------------
def test_validation_line_fits_with_large_numbers_and_in_a_pack():
    line = validation_line("", 0, 20, 2_000, -228.43, "10,000", -704.14)
    assert line == "epoch   0 step     20     2,000 samples | val ELBO  -228.43 (10,000 val images) | train  -704.14"
    for job, epoch, step, samples in (("", 19, 10_000, 1_000_000), ("[job 3] ", 19, 10_000, 1_000_000),
                                      ("[job 12] ", 1999, 1_000_000, 100_000_000)):
        line = validation_line(job, epoch, step, samples, -1234.56, "10,000", -1299.99)
        assert len(line) <= WIDTH and re.match(rf"{re.escape(job)}epoch +{epoch} ", line), line
        assert f"{samples:,} samples" in line and "(10,000 val images)" in line and "train -1299.99" in line
    assert "train" not in validation_line("", 0, 0, 0, -1.0, "?", None)


def test_best_and_last_line_says_when_they_are_the_same_model():
    same = best_line(False, 10_000, 10_000, -123.51, -123.40)  # best validation at the last step
    assert same == "best.ckpt: the final model, same as last.ckpt (step 10,000), val ELBO -123.51 nats/datapoint"
    assert best_line(True, 10_000, None, -123.51, -124.0) == same  # the final model beat every validation
    assert best_line(True, 10_000, None, -123.51, None) == same  # no validation during fit
    other = best_line(False, 10_000, 9_000, -123.9, -123.51)
    assert other == "best.ckpt: step 9,000, val ELBO -123.51 nats/datapoint; last.ckpt: final model, step 10,000"
    assert "same" not in other
    for line in (best_line(False, 1_000_000, 999_000, -1.0, -1234.56), best_line(True, 1_000_000, None, -1234.56, None),
                 best_line(False, 1_000_000, None, -1.0, -1234.56)):
        assert len(line) <= WIDTH, line


# -- a real run --------------------------------------------------------------------------------------------
def test_every_line_of_a_small_run_fits_100_columns(mirror, tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli("max_samples=20000", "data.train_size=2000", "logger=csv", "callbacks.progress_bar.print_every_s=1",
                   f"hydra.run.dir={run_dir}", env_extra={"AEVB_DATA_MIRROR": str(mirror), "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (proc.stdout + proc.stderr).splitlines()
    wide = [f"{len(ln)}: {ln}" for ln in lines if len(ln) > WIDTH]
    assert not wide, "\n".join(wide)
    out = proc.stdout
    assert "ELBO in nats/datapoint; train = running mean over this epoch so far" in out
    assert "it/s" not in out and "(running mean)" not in out
    assert "weights_only" not in proc.stderr, proc.stderr  # Lightning's info lines stay filtered
    # the bar (and its plain lines, stdout being no terminal): samples, samples/s and an ETA, on one line each
    status = [ln for ln in lines if re.search(r"\d samples  \S+ samples/s  ETA \d+:\d\d:\d\d", ln)]
    assert status and all(ln.startswith("Epoch ") for ln in status), status
    assert re.search(r"Epoch 9 +\S+ 20/20 20,000 samples  \S+ samples/s  ETA 0:00:00  ELBO -\d+\.\d \(epoch mean\)",
                     out), out
    (ckpt_line,) = [ln for ln in lines if ln.startswith("best.ckpt:")]
    best_step = saved_step(run_dir / "checkpoints" / "best.ckpt")
    if best_step == 200:
        assert ckpt_line.startswith("best.ckpt: the final model, same as last.ckpt (step 200), val ELBO ")
    else:
        assert ckpt_line.startswith(f"best.ckpt: step {best_step:,}, val ELBO ") and "step 200" in ckpt_line
