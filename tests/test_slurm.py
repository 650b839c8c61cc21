"""aevb on a real SLURM: a single-node cluster on this machine (scripts/slurm_up.sh), jobs submitted by
``aevb-train -m hydra/launcher=slurm`` exactly as on a cluster, all on the CPU.

Opt-in (AEVB_SLURM_TESTS=1; ``make test-slurm`` and .ci/run set it): the fixture installs slurm-wlm and
munge with apt-get and starts SLURM's daemons as root, which a plain ``make test`` must not do to a
developer's machine. Where SLURM cannot start here (not root, no apt-get) the tests skip with the reason.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, run_cli

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.skipif(os.environ.get("AEVB_SLURM_TESTS") != "1",
                                reason="SLURM tests are opt-in: AEVB_SLURM_TESTS=1 (make test-slurm; .ci/run runs them);"
                                       " they install and start a single-node SLURM on this machine as root")

# Overrides every job here needs on a CPU-only cluster (README "Running on a SLURM cluster").
CPU_JOBS = ("hydra/launcher=slurm", "hydra.launcher.gpus_per_node=0", "hydra.launcher.cpus_per_task=1",
            "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=15")
TINY = ("data=frey_face", "model.latent_dim=5", "logger=csv", "callbacks.progress_bar=null")
# as in test_reliability: deterministic on the CPU, validating (and so checkpointing) every 5 steps
# fast.enabled=false: PauseAt holds a job at one exact step, and the fast loop runs its steps in chunks
# (its stop at the signal's step and its exact resume are tested in tests/test_reliability.py)
RESUMABLE = (*TINY, "max_samples=4500", "trainer.deterministic=true", "trainer.val_check_interval=5",
             "callbacks.elbo_curve.start=1000", "fast.enabled=false")
FINAL = ("train/elbo", "val/elbo", "test/elbo", "samples_seen", "global_step")


def _daemons_up() -> bool:
    pid = Path("/run/slurm-aevb/slurmctld.pid")
    try:
        os.kill(int(pid.read_text()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def slurm():
    """A running single-node SLURM; stopped at the end if this session started it."""
    was_up = _daemons_up()
    proc = subprocess.run(["bash", str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True,
                          timeout=900)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield
    if not was_up:
        subprocess.run(["bash", str(REPO / "scripts" / "slurm_down.sh")], capture_output=True, timeout=120)


def _env(mirror) -> dict:
    # sbatch passes the submitting environment on: the jobs find the data and the test callbacks
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {"AEVB_DATA_MIRROR": str(mirror), "PYTHONPATH": path}


def _sweep(mirror, sweep: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("-m", *CPU_JOBS, *args, f"hydra.sweep.dir={sweep}", env_extra=_env(mirror), timeout=900)


def _popen_sweep(mirror, sweep: Path, *args: str) -> subprocess.Popen:
    """The same, started in the background (the test signals its jobs while it waits)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **_env(mirror)})
    cmd = [str(Path(sys.executable).with_name("aevb-train")), "-m", *CPU_JOBS, *args, f"hydra.sweep.dir={sweep}"]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _job_log(sweep: Path, num: int, stream: str, task: int = 0) -> str:
    """What one task of a job printed (all SLURM attempts: submitit appends). A sweep of one job is not an array."""
    logs = sorted((sweep / ".submitit").glob(f"*_{num}/*_{num}_{task}_log.{stream}"))
    if not logs and num == 0:
        logs = sorted((sweep / ".submitit").glob(f"*/*_{task}_log.{stream}"))
    assert len(logs) == 1, logs
    return logs[0].read_text()


def _final(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    return {k: summary[k] for k in FINAL}


def test_a_sweep_runs_as_a_slurm_job_array_and_names_its_failed_jobs(slurm, mirror, tmp_path):
    sweep = tmp_path / "sweep"
    proc = _sweep(mirror, sweep, *TINY, "max_samples=1000", "model.latent_dim=2,5", "data.binarize=none,sometimes")
    assert proc.returncode == 1, proc.stderr[-3000:]  # the sweep finishes; its exit status says jobs failed
    script = next((sweep / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-3%" in script and "\nsrun " in script and "--signal=USR1@" in script
    for num in (0, 2):
        assert json.loads((sweep / str(num) / "summary.json").read_text())["samples_seen"] == 1000
        assert "JobEnvironment(job_id=" in _job_log(sweep, num, "out")  # ran as a SLURM array task
    for num in (1, 3):
        assert "data.binarize" in json.loads((sweep / str(num) / "failed.json").read_text())["error"]
        assert not (sweep / str(num) / "summary.json").exists()
    table = list(csv.DictReader((sweep / "results.csv").open()))
    assert [(r["job"], r["status"]) for r in table] == [("0", "ok"), ("1", "failed"), ("2", "ok"), ("3", "failed")]
    assert (sweep / "results.md").read_text().count("| ok |") == 2
    assert "2 sweep job(s) failed: 1, 3" in proc.stderr and "Traceback" not in proc.stderr


# One process with batch 200 and DDP's 2 ranks x 100 take the same 50 steps of 200 datapoints (DDP averages
# the ranks' gradients); they differ only in which datapoints and noise each step draws. After 10^4 MNIST
# samples (N_z = 5), test ELBOs measured here on this cluster: one process, seeds 0-3: -207.3, -211.2, -219.3,
# -208.3; DDP, seeds 0-2: -213.3, -211.4, -210.1 (means -211.5 and -211.6). Seeds alone spread 12 nats.
DDP_TOLERANCE = 20.0  # nats per datapoint, test ELBO on the 10,000 MNIST test images
DDP_RUN = ("data=mnist", "data.val_size=1000", "data.train_eval_size=1000", "model.latent_dim=5",
           "max_samples=10000", "logger=csv", "callbacks.progress_bar=null", "hydra.launcher.mem_gb=2")


def test_ddp_on_two_slurm_tasks_matches_one_process(slurm, mirror, tmp_path):
    ddp = _popen_sweep(mirror, tmp_path / "ddp", *DDP_RUN, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    one = _popen_sweep(mirror, tmp_path / "one", *DDP_RUN, "data.batch_size=200")
    for proc in (ddp, one):
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, err[-3000:]
    script = next((tmp_path / "ddp" / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script  # tasks_per_node follows trainer.devices
    # both ranks are SLURM tasks of one job, each with its own log; rank 0 reports the world size
    assert "global_rank=1(2)" in _job_log(tmp_path / "ddp", 0, "out", task=1)
    assert "budget: 10,000 training samples = 50 steps of 200" in _job_log(tmp_path / "ddp", 0, "out")
    ddp_summary = json.loads((tmp_path / "ddp" / "0" / "summary.json").read_text())
    one_summary = json.loads((tmp_path / "one" / "0" / "summary.json").read_text())
    assert ddp_summary["samples_seen"] == one_summary["samples_seen"] == 10000
    assert ddp_summary["global_step"] == one_summary["global_step"] == 50
    assert ddp_summary["test/n_datapoints"] == one_summary["test/n_datapoints"] == 10000
    assert abs(ddp_summary["test/elbo"] - one_summary["test/elbo"]) < DDP_TOLERANCE, (ddp_summary, one_summary)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 400) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file():
            return json.loads(path.read_text())
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{path} did not appear within {timeout} s")


# SLURM's own time-limit signal: --signal=USR1@120 on a 4-minute job is due 120 s after the start and comes
# up to 60 s early (sbatch's manual), so when the job, held at step 23, is training. A requeued attempt gets
# a new limit and may be signalled again (on a busy machine): it then resumes from that later step as well.
TIME_LIMIT = ("hydra.launcher.timeout_min=4", "hydra.launcher.signal_delay_s=120")
PAUSE = "+callbacks.pause._target_=slurm_callbacks.PauseAt"


@pytest.fixture(scope="module")
def interrupted_sweep(slurm, mirror, tmp_path_factory):
    """Four jobs of the same deterministic run, two sweeps submitted at once. Sweep ``main``: job 0
    uninterrupted; job 1 held at step 23 and sent SIGUSR1 as SLURM sends it for pre-emption warnings and time
    limits (``scancel --signal=USR1``: the job's steps, not its batch shell); job 2 held at step 31 and
    requeued by ``scontrol requeue`` (SLURM sends SIGTERM, then starts the job again). Sweep ``limit``: one
    job with a 4-minute limit, held at step 23 until SLURM's time-limit signal comes."""
    root = tmp_path_factory.mktemp("preempt")
    main = _popen_sweep(mirror, root / "main", *RESUMABLE, PAUSE, "+callbacks.pause.step=null,23,31")
    limit = _popen_sweep(mirror, root / "limit", *RESUMABLE, PAUSE, "+callbacks.pause.step=23", *TIME_LIMIT)
    outputs, jobs = {}, {}
    try:
        for num, send in ((1, ["scancel", "--signal=USR1"]), (2, ["scontrol", "requeue"])):
            jobs[num] = _wait_for(root / "main" / str(num) / "paused.json", main)["slurm_job"]
            subprocess.run([*send, jobs[num]], check=True, capture_output=True, timeout=60)
        for name, proc in (("main", main), ("limit", limit)):
            out, err = proc.communicate(timeout=600)
            outputs[name] = (proc.returncode, out + err)
    finally:
        for proc in (main, limit):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                proc.communicate(timeout=60)
    return root, outputs, jobs


SETTLED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL")


def _slurm_job(job_id: str, timeout: float = 120) -> dict:
    """SLURM's own record of a job once it has settled. A sweep can end before its last job has: submitit
    reads a job's result file, which the job writes before its process exits (the record still says RUNNING
    or COMPLETING then), so the record is polled until its state is a final one."""
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
        record = dict(field.split("=", 1) for field in out.split() if "=" in field)
        if record.get("JobState") in SETTLED or time.monotonic() > deadline:
            return record
        time.sleep(1)


def _assert_resumed_from(root: Path, sweep: str, num: int, step: int, reruns_ok: bool = False) -> None:
    run_dir = root / sweep / str(num)
    attempts = [(a["restart_count"], a["start_step"]) for a in map(json.loads, (run_dir / "attempts.jsonl").open())]
    # the requeued attempt started training at the interrupted step: from the checkpoint, not afresh
    assert attempts[:2] == [(0, 0), (1, step)] and (len(attempts) == 2 or reruns_ok), attempts
    assert all(b[1] > a[1] for a, b in zip(attempts, attempts[1:])), attempts  # never back to an earlier step
    assert f"resuming from {run_dir.resolve() / 'checkpoints' / 'last.ckpt'}" in _job_log(root / sweep, num, "out")
    assert json.loads((run_dir / "status.json").read_text())["status"] == "finished"
    assert _final(run_dir) == _final(root / "main" / "0")  # exactly the uninterrupted job's result
    record = _slurm_job(_job_id(run_dir))  # SLURM's own account of the job: requeued, then completed
    assert (record.get("JobState"), record.get("Restarts")) == ("COMPLETED", str(len(attempts) - 1)), (
        {k: record.get(k) for k in ("JobState", "Reason", "Restarts", "RunTime", "TimeLimit")}, attempts)


def _job_id(run_dir: Path) -> str:
    return json.loads((run_dir / "attempts.jsonl").open().readline())["slurm_job"]


def test_the_sweeps_with_interrupted_jobs_finish_with_every_job(interrupted_sweep):
    root, outputs, _ = interrupted_sweep
    for name, jobs in (("main", 3), ("limit", 1)):
        returncode, output = outputs[name]
        assert returncode == 0, output[-3000:]
        assert f"{jobs} of {jobs} jobs finished" in output
    assert len((root / "main" / "0" / "attempts.jsonl").read_text().splitlines()) == 1  # never interrupted


def test_slurm_preemption_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(interrupted_sweep):
    root, _, jobs = interrupted_sweep
    log = _job_log(root / "main", 1, "err")
    assert "interrupted by SIGUSR1 at step 23" in log and f"SLURM job {jobs[1]} requeued" in log
    assert "Traceback" not in log
    _assert_resumed_from(root, "main", 1, 23)


def test_slurm_time_limit_signal_checkpoints_requeues_and_resumes_to_the_uninterrupted_result(interrupted_sweep):
    root, _, _ = interrupted_sweep
    script = next((root / "limit" / ".submitit").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --signal=USR1@120" in script and "#SBATCH --time=4" in script
    assert "interrupted by SIGUSR1 at step 23" in _job_log(root / "limit", 0, "err")
    _assert_resumed_from(root, "limit", 0, 23, reruns_ok=True)


def test_scontrol_requeue_of_a_running_job_resumes_from_its_interrupted_checkpoint(interrupted_sweep):
    root, _, _ = interrupted_sweep
    assert "interrupted by SIGTERM at step 31" in _job_log(root / "main", 2, "err")
    _assert_resumed_from(root, "main", 2, 31)


def test_a_preempted_ddp_job_checkpoints_on_both_ranks_requeues_and_finishes(slurm, mirror, tmp_path):
    """Both SLURM tasks (ranks) get the signal and stop at the same step; rank 0 requeues. Resumed mid-epoch,
    DDP replays that epoch from its start (README "When things go wrong"), so the count is exact, the ELBO not."""
    sweep = tmp_path / "sweep"
    proc = _popen_sweep(mirror, sweep, *RESUMABLE, "max_samples=6000", "trainer=ddp", "trainer.accelerator=cpu",
                        "trainer.devices=2", PAUSE, "+callbacks.pause.step=10")
    try:
        job = _wait_for(sweep / "0" / "paused.json", proc)["slurm_job"]
        subprocess.run(["scancel", "--signal=USR1", job], check=True, capture_output=True, timeout=60)
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-3000:]
    assert "interrupted by SIGUSR1 at step 10" in _job_log(sweep, 0, "err") and "requeued" in _job_log(sweep, 0, "err")
    attempts = [(a["restart_count"], a["start_step"]) for a in map(json.loads, (sweep / "0" / "attempts.jsonl").open())]
    assert attempts == [(0, 0), (1, 10)]
    for task in (0, 1):  # each rank resumed from the checkpoint
        assert _job_log(sweep, 0, "out", task=task).count("resuming from") == 1
    summary = json.loads((sweep / "0" / "summary.json").read_text())
    assert summary["samples_seen"] == 6000 and summary["global_step"] == 30
