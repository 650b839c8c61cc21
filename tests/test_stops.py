"""Stops and collisions, second pass: a signal to a packed sweep's process (alone, or its whole group), a second
Ctrl-C inside a step, a kill just after an epoch's last checkpoint, two runs in one folder, a bad value found after
Hydra made the run folder, an unquoted non-ASCII run folder. Real aevb-train subprocesses on Frey Face (15 batches
an epoch), each asserting the exit status, the message and the files left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, assert_one_line_error, run_cli

TESTS = Path(__file__).resolve().parent
BASE = ("data=frey_face", "model.latent_dim=5", "logger=csv", "callbacks.progress_bar=null",
        "trainer.deterministic=true")
FINAL = ("train/elbo", "val/elbo", "test/elbo", "samples_seen", "global_step", "epochs")


def _env(mirror, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", "AEVB_DATA_MIRROR": str(mirror),
                "PYTHONPATH": path, **extra})
    return env


def _signal_at(step: int, sig: str, where: str = "train", target: str = "self", times: int = 1) -> tuple[str, ...]:
    return ("+callbacks.stop._target_=kill_callbacks.SignalAt", f"+callbacks.stop.step={step}",
            f"+callbacks.stop.sig={sig}", f"+callbacks.stop.where={where}", f"+callbacks.stop.target={target}",
            f"+callbacks.stop.times={times}")


def _train(mirror, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """aevb-train in a process group of its own (a test callback may signal the whole group)."""
    exe = Path(sys.executable).with_name("aevb-train")
    return subprocess.run([str(exe), *args], cwd=REPO, env=_env(mirror), capture_output=True, text=True,
                          timeout=timeout, start_new_session=True)


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in FINAL}


def _status(run_dir: Path) -> dict:
    return json.loads((run_dir / "status.json").read_text())


# -- a packed sweep stopped by a signal to the process the user started, or to its process group --------------
@pytest.mark.parametrize("target", ["parent", "group"])
def test_a_signal_to_a_packed_sweep_stops_every_member_with_a_checkpoint_and_names_their_resume_commands(
        mirror, tmp_path, target):
    sweep = tmp_path / "sweep"
    # the members (one pack's process, threads) send SIGTERM at step 60 of 300 to the sweep's process (parent)
    # or to the whole group: either way both stop at a step with a checkpoint, none is reported as failed
    proc = _train(mirror, "-m", "hydra/launcher=packed", "seed=0,1", *BASE, "max_samples=30000",
                  *_signal_at(60, "SIGTERM", target=target), f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "failed" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if "sweep interrupted" in ln]
    assert len(lines) == 1 and lines[0].startswith("aevb-train: sweep interrupted by SIGTERM: job(s) 0, 1 stopped")
    for job in (0, 1):
        d = sweep / str(job)
        status = _status(d)
        assert status["status"] == "interrupted" and status["signal"] == "SIGTERM", status
        assert 60 <= status["step"] < 300 and Path(status["checkpoint"]).is_file()
        assert f"job {job}: {status['resume']}" in lines[0]
        assert not (d / "failed.json").exists() and not (d / "summary.json").exists()
    assert not (sweep / "results.md").exists()  # the sweep did not end: no results table pretends it did

    # the printed resume command finishes the member; a stale failed.json (as an older aevb wrote) is removed
    job0 = sweep / "0"
    (job0 / "failed.json").write_text('{"status": "failed", "error": "job process ended without a result"}\n')
    resumed = subprocess.run(["bash", "-c", _status(job0)["resume"]], cwd=tmp_path, env=_env(mirror),
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((job0 / "summary.json").read_text())
    assert summary["samples_seen"] == 30000 and _status(job0)["status"] == "finished"
    assert not (job0 / "failed.json").exists()


# -- a second Ctrl-C inside the step that received the first ---------------------------------------------------
def test_a_second_ctrl_c_stops_at_once_with_status_resume_line_and_exit_130(mirror, tmp_path):
    run_dir = tmp_path / "run"
    common = (*BASE, "max_samples=4500", "trainer.val_check_interval=5", f"hydra.run.dir={run_dir}")
    reference = tmp_path / "reference"
    ref = _train(mirror, *BASE, "max_samples=4500", "trainer.val_check_interval=5", f"hydra.run.dir={reference}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    proc = _train(mirror, *common, *_signal_at(12, "SIGINT", times=2))
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr[-3000:]
    assert "Detected KeyboardInterrupt" not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    status = _status(run_dir)
    assert status["status"] == "interrupted" and status["at_once"] and status["signal"] == "SIGINT"
    assert status["step"] == 10 and 12 <= status["stopped_at_step"] <= 15  # the last checkpoint is the one kept
    lines = [ln for ln in proc.stderr.splitlines() if "interrupted by a second SIGINT" in ln]
    assert len(lines) == 1 and "last checkpoint (step 10" in lines[0] and lines[0].endswith(status["resume"])
    resumed = subprocess.run(["bash", "-c", status["resume"]], cwd=tmp_path, env=_env(mirror), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final(run_dir) == _final(reference)


# -- SIGKILL just after the checkpoint of an epoch's last step -----------------------------------------------
@pytest.mark.parametrize("loop", ["fast", "standard"])
def test_a_kill_after_an_epochs_last_checkpoint_resumes_to_every_field_of_the_uninterrupted_run(
        mirror, tmp_path, loop):
    import torch

    extra = ("max_samples=4500", "trainer.val_check_interval=5", f"fast.enabled={loop == 'fast'}")
    reference, run_dir = tmp_path / "reference", tmp_path / "run"
    ref = _train(mirror, *BASE, *extra, f"hydra.run.dir={reference}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    killed = _train(mirror, *BASE, *extra, f"hydra.run.dir={run_dir}", *_signal_at(30, "SIGKILL", "epoch_end"))
    assert killed.returncode == -signal.SIGKILL
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 30  # 2 epochs of 15 steps: the checkpoint of the second epoch's last step
    resumed = _train(mirror, *BASE, *extra, f"hydra.run.dir={run_dir}",
                     f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final(run_dir) == _final(reference) and _final(run_dir)["epochs"] == 3
    assert (run_dir / "curve.csv").read_text() == (reference / "curve.csv").read_text()
    epochs = [ln.split()[1] for ln in resumed.stdout.splitlines() if ln.startswith("epoch ")]
    assert epochs and set(epochs) == {"2"}  # the steps after the resume are the third epoch's (0-based 2)


# -- two runs in one folder ----------------------------------------------------------------------------------
def test_a_second_run_in_a_live_runs_folder_is_refused_and_a_dead_runs_lock_is_taken_over(mirror, tmp_path):
    from aevb.run_lock import LOCK_FILE

    run_dir = tmp_path / "run"
    exe = Path(sys.executable).with_name("aevb-train")
    first = subprocess.Popen([str(exe), *BASE, "model.latent_dim=3", "max_samples=60000", f"hydra.run.dir={run_dir}"],
                             cwd=REPO, env=_env(mirror), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stdout:
            if line.startswith("run folder:"):
                break
        second = run_cli(*BASE, "max_samples=200", f"hydra.run.dir={run_dir}", env_extra=_env(mirror))
        assert_one_line_error(second, f"hydra.run.dir={run_dir} is in use by another aevb-train run (pid {first.pid}",
                              "choose another folder")
        out, err = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["latent_dim"] == 3 and summary["samples_seen"] == 60000  # the first run's folder, whole
    assert "model.latent_dim=3" in (run_dir / ".hydra" / "overrides.yaml").read_text()

    stale = tmp_path / "stale"
    stale.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (stale / LOCK_FILE).write_text(f"{dead.stdout.strip()} somehost\n")  # left by a run that no longer lives
    again = run_cli(*BASE, "max_samples=200", f"hydra.run.dir={stale}", env_extra=_env(mirror))
    assert again.returncode == 0, again.stderr[-3000:]
    assert (stale / "summary.json").is_file()


# -- a bad value found after Hydra made the run folder; an unquoted non-ASCII folder ---------------------------
@pytest.mark.parametrize("override,fragment", [("data.batch_size=0", "data.batch_size must be a positive integer"),
                                               ("data.train_size=5", "data.train_size")])
def test_an_error_found_in_the_run_leaves_no_run_folder(mirror, tmp_path, override, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli(*BASE, override, f"hydra.run.dir={run_dir}", env_extra=_env(mirror))
    assert_one_line_error(proc, fragment)
    assert not run_dir.exists()


def test_an_unquoted_non_ascii_run_folder_gets_one_line_that_says_how_to_quote_it(mirror, tmp_path):
    run_dir = tmp_path / "dé"
    proc = run_cli(*BASE, f"hydra.run.dir={run_dir}", env_extra=_env(mirror))
    assert_one_line_error(proc, f"""'hydra.run.dir="{run_dir}"'""")
    assert not run_dir.exists()
    quoted = run_cli(*BASE, "max_samples=200", f'hydra.run.dir="{run_dir}"', env_extra=_env(mirror))
    assert quoted.returncode == 0, quoted.stderr[-3000:]  # as the line says
    assert (run_dir / "summary.json").is_file()
