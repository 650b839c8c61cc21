"""Killed, pre-empted, diverged or mis-configured runs: never a success, nothing lost, exact resume.

Every run is a real aevb-train subprocess on Frey Face (fast: 15 batches an epoch), deterministic on
the CPU, validating (and so checkpointing) every 5 steps, mid-epoch.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
from pathlib import Path

import pytest
import torch

from helpers import assert_one_line_error, run_cli

TESTS = Path(__file__).resolve().parent
BASE = ("data=frey_face", "model.latent_dim=5", "max_samples=4500", "logger=csv", "callbacks.progress_bar=null",
        "trainer.deterministic=true", "trainer.val_check_interval=5", "callbacks.elbo_curve.start=1000")
FINAL = ("train/elbo", "val/elbo", "test/elbo", "samples_seen", "global_step")


def _env(mirror, **extra) -> dict:
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"AEVB_DATA_MIRROR": str(mirror), "PYTHONPATH": path, **extra}


def _train(run_dir: Path, mirror, *extra: str, env: dict | None = None):
    return run_cli(*BASE, f"hydra.run.dir={run_dir}", *extra, env_extra={**_env(mirror), **(env or {})})


def _signal_at(step: int, sig: str, where: str = "train") -> tuple[str, ...]:
    return ("+callbacks.stop._target_=kill_callbacks.SignalAt", f"+callbacks.stop.step={step}",
            f"+callbacks.stop.sig={sig}", f"+callbacks.stop.where={where}")


def _resume(run_dir: Path, mirror, *extra: str, env: dict | None = None):
    return _train(run_dir, mirror, f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", *extra, env=env)


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in FINAL}


@pytest.fixture(scope="module")
def reference(mirror, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    proc = _train(run_dir, mirror)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir


@pytest.mark.parametrize("step,where", [(23, "train"),        # mid-epoch, 3 steps after a checkpoint
                                        (31, "train"),        # just after the checkpoint of step 30
                                        (40, "validation")],  # inside the validation at step 40
                         ids=["mid-epoch", "after-checkpoint", "during-validation"])
def test_sigkill_then_resume_ends_exactly_where_the_uninterrupted_run_does(reference, mirror, tmp_path, step, where):
    killed = _train(tmp_path, mirror, *_signal_at(step, "SIGKILL", where))
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "summary.json").exists()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert 0 < ckpt["global_step"] <= step and ckpt["global_step"] % 5 == 0
    resumed = _resume(tmp_path, mirror)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final(tmp_path) == _final(reference)  # exactly: same weights, noise, data position
    assert (tmp_path / "curve.csv").read_text() == (reference / "curve.csv").read_text()
    rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    steps = [int(float(r.split(",")[[*rows[0].split(",")].index("step")])) for r in rows[1:]]
    assert min(steps) < ckpt["global_step"]  # the rows from before the crash are still there


def test_sigterm_checkpoints_at_that_step_and_resumes_exactly(reference, mirror, tmp_path):
    stopped = _train(tmp_path, mirror, *_signal_at(17, "SIGTERM"))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    # sent after step 17 (standard loop) or after the fast loop's chunk that holds it (steps 15..19)
    step = status["step"]
    assert status["status"] == "interrupted" and status["signal"] == "SIGTERM" and 17 <= step <= 20
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == step
    assert not (tmp_path / "summary.json").exists()
    lines = [ln for ln in stopped.stderr.splitlines() if "interrupted by SIGTERM" in ln]
    assert len(lines) == 1 and f"at step {step}" in lines[0] and status["resume"] in lines[0]
    assert "Traceback" not in stopped.stderr
    resumed = _resume(tmp_path, mirror)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _final(tmp_path) == _final(reference)
    assert json.loads((tmp_path / "status.json").read_text())["status"] == "finished"


def test_the_printed_resume_command_runs_as_printed_in_a_folder_with_a_space_and_non_ascii(reference, mirror, tmp_path):
    """The resume line is pasted into a shell as it stands: the launcher by absolute path, every override quoted
    for the shell and for Hydra's grammar, the data mirror carried; it ends exactly as the uninterrupted run."""
    import subprocess

    from aevb.run_control import hydra_value

    run_dir = tmp_path / "run dir ü"
    stopped = run_cli(*BASE, f"hydra.run.dir={hydra_value(str(run_dir))}", *_signal_at(17, "SIGTERM"),
                      env_extra=_env(mirror))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    line = next(ln for ln in stopped.stderr.splitlines() if "Resume with: " in ln)
    command = line.split("Resume with: ", 1)[1]
    assert command.startswith(f"AEVB_DATA_MIRROR={mirror.absolute()} /"), command  # absolute aevb-train
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "AEVB_"))}
    env.update(WANDB_MODE="offline", PYTHONWARNINGS="ignore", PYTHONPATH=_env(mirror)["PYTHONPATH"])
    resumed = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                             timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {run_dir / 'checkpoints' / 'last.ckpt'}" in resumed.stdout
    assert _final(run_dir) == _final(reference)


def test_a_run_started_by_make_train_prints_a_make_train_resume_command(tmp_path):
    """Through make, the resume line is ``make train ARGS=...``; make's recipe hands aevb-train exactly the
    run's overrides back (checked with ``make -n``, which prints the recipe without running it)."""
    import shlex
    import subprocess

    from aevb.run_control import resume_command
    from helpers import REPO

    ckpt, run_dir = tmp_path / "run dir ü" / "checkpoints" / "last.ckpt", tmp_path / "run dir ü"
    env = {k: v for k, v in os.environ.items() if k != "AEVB_DATA_MIRROR"}
    old = os.environ.copy()
    try:
        os.environ.clear()
        os.environ.update(env, AEVB_STARTED_BY="make train")
        command = resume_command(ckpt, run_dir)
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert command.startswith("make train ARGS="), command
    dry = subprocess.run(["bash", "-c", command.replace("make train", "make -n train", 1)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert dry.returncode == 0, dry.stderr
    recipe = next(ln for ln in dry.stdout.splitlines() if "aevb-train" in ln)
    assert shlex.split(recipe)[2:] == [f"ckpt_path='{ckpt}'", f"hydra.run.dir='{run_dir}'"]


def test_ctrl_c_checkpoints_and_says_how_to_resume(mirror, tmp_path):
    stopped = _train(tmp_path, mirror, *_signal_at(12, "SIGINT"))
    assert stopped.returncode == 128 + signal.SIGINT
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["signal"] == "SIGINT" and 12 <= status["step"] <= 15 and "ckpt_path=" in status["resume"]


def test_slurm_requeue_signal_requeues_and_the_requeued_job_resumes_by_itself(reference, mirror, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"  # records what the job asked SLURM to do
    scontrol.write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'scontrol.log'}\n")
    scontrol.chmod(scontrol.stat().st_mode | stat.S_IEXEC)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_NTASKS": "1", "SLURM_JOB_NAME": "aevb", "SLURM_PROCID": "0",
             "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run_dir = tmp_path / "run"
    first = _train(run_dir, mirror, *_signal_at(22, "SIGUSR1"), env=slurm)
    assert first.returncode == 128 + signal.SIGUSR1, first.stderr[-3000:]
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert json.loads((run_dir / "status.json").read_text())["requeued_slurm_job"] == "4242"
    # SLURM starts the same command again, with SLURM_RESTART_COUNT set
    again = _train(run_dir, mirror, env={**slurm, "SLURM_RESTART_COUNT": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from" in again.stdout
    assert _final(run_dir) == _final(reference)


def test_divergence_stops_with_one_line_and_leaves_no_nan(mirror, tmp_path):
    proc = run_cli("model/optimizer=adam", "model.optimizer.lr=1000", "max_samples=5000", "logger=csv",
                   "callbacks.progress_bar=null", "trainer.val_check_interval=10", f"hydra.run.dir={tmp_path}",
                   env_extra=_env(mirror))
    assert_one_line_error(proc, "training diverged by step", "not finite", only_line=False)
    assert not (tmp_path / "summary.json").exists()
    last = tmp_path / "checkpoints" / "last.ckpt"
    if last.exists():  # a checkpoint from before the divergence: finite
        state = torch.load(last, weights_only=False)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    if (tmp_path / "curve.csv").exists():
        assert "nan" not in (tmp_path / "curve.csv").read_text().lower()


def test_resume_with_another_shape_is_refused_before_touching_the_run(reference, mirror, tmp_path):
    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(reference, run_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    proc = _resume(run_dir, mirror, "model.latent_dim=20")
    assert_one_line_error(proc, "does not match the configured model", "encoder", only_line=False)
    after = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
    assert after == before


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_failed_checkpoint_write_leaves_the_previous_one_intact(reference, mirror, tmp_path):
    import resource
    import shutil
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    shutil.copytree(reference, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    before = _md5(last)
    limit = last.stat().st_size // 2  # a "full disk": no file may grow past half a checkpoint

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(_env(mirror), PYTHONWARNINGS="ignore")
    exe = Path(sys.executable).with_name("aevb-train")
    proc = subprocess.run([str(exe), *BASE, "max_samples=9000", f"hydra.run.dir={run_dir}", f"ckpt_path={last}"],
                          env=env, capture_output=True, text=True, timeout=240, preexec_fn=small_disk)
    assert_one_line_error(proc, "could not write checkpoint", "intact", only_line=False)
    assert _md5(last) == before
    assert not list(run_dir.rglob(".*.tmp-*"))


@pytest.mark.parametrize("override,fragment", [
    ("model.optimizer.lr=-0.02", "model.optimizer.lr must be a positive number"),
    ("model.optimizer.lr=0", "model.optimizer.lr must be a positive number"),
    ("max_samples=abc", "max_samples must be a positive whole number"),
    ("max_samples=2.5", "max_samples must be a positive whole number"),
    ("ckpt_path=/nonexistent/last.ckpt", "does not exist"),
])
def test_bad_inputs_get_one_line_and_leave_nothing(mirror, tmp_path, override, fragment):
    run_dir = tmp_path / "run"
    proc = run_cli("data=frey_face", "logger=csv", override, f"hydra.run.dir={run_dir}", env_extra=_env(mirror))
    assert_one_line_error(proc, fragment)
    assert not run_dir.exists()


def test_an_output_folder_that_cannot_be_created_gets_one_line(mirror, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run_cli("data=frey_face", "logger=csv", f"hydra.run.dir={blocker / 'run'}", env_extra=_env(mirror))
    assert_one_line_error(proc, "cannot be created", "is a file")


def test_a_sweep_folder_is_never_reused(mirror, tmp_path):
    sweep = tmp_path / "sweep"
    first = run_cli("-m", "data=frey_face", "model.latent_dim=2,3", "max_samples=200", "logger=csv", "callbacks=none",
                    f"hydra.sweep.dir={sweep}", env_extra=_env(mirror))
    assert first.returncode == 0, first.stderr[-3000:]
    report = (sweep / "results.md").read_text()
    second = run_cli("-m", "data=frey_face", "model.latent_dim=2", "max_samples=200", "logger=csv", "callbacks=none",
                     f"hydra.sweep.dir={sweep}", env_extra=_env(mirror))
    assert_one_line_error(second, "already holds a sweep (2 job folders)")
    assert (sweep / "results.md").read_text() == report


def test_a_partial_evaluation_never_overwrites_a_full_one(reference, mirror, tmp_path):
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    import shutil

    shutil.copytree(reference, run_dir)
    exe = Path(sys.executable).with_name("aevb-eval")
    env = {**os.environ, **_env(mirror)}
    full = subprocess.run([str(exe), str(run_dir), "--k", "10"], env=env, capture_output=True, text=True, timeout=240)
    part = subprocess.run([str(exe), str(run_dir), "--k", "10", "--max-datapoints", "50"], env=env,
                          capture_output=True, text=True, timeout=240)
    assert full.returncode == 0 and part.returncode == 0, full.stderr[-2000:] + part.stderr[-2000:]
    whole = json.loads((run_dir / "eval_test_k10_seed0.json").read_text())
    first = json.loads((run_dir / "eval_test_k10_seed0_first50.json").read_text())
    assert whole["n_datapoints"] == 200 and first["n_datapoints"] == 50


def test_a_stop_signal_before_training_starts_is_not_fatal(reference, mirror, tmp_path):
    """SIGUSR1 (SLURM's time-limit warning) while the run is still being built: the run trains to its first step
    boundary, checkpoints, writes status.json and exits 138; the resume ends exactly as the uninterrupted run."""
    import subprocess
    import sys

    from helpers import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"PYTHONWARNINGS": "ignore", **_env(mirror)})
    exe = str(Path(sys.executable).with_name("aevb-train"))
    proc = subprocess.Popen([exe, *BASE, f"hydra.run.dir={tmp_path}"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # printed at the start of the run, before the data and the networks are built
            if line.startswith("run folder:"):
                proc.send_signal(signal.SIGUSR1)
                break
        out, err = proc.communicate(timeout=300)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGUSR1, err[-3000:]
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["status"] == "interrupted" and status["signal"] == "SIGUSR1" and status["step"] >= 1
    assert Path(status["checkpoint"]).is_file() and not (tmp_path / "summary.json").exists()
    again = _resume(tmp_path, mirror)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _final(tmp_path) == _final(reference)
