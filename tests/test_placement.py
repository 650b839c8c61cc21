"""hydra/launcher=gpu_parallel places each sweep job on one GPU (GPU lists faked on CPU), and
submitit_local does not hide the GPUs (see test_sweeps)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from helpers import assert_one_line_error, run_cli

REPO = Path(__file__).resolve().parents[1]
TINY_JOB = ["data=frey_face", "max_samples=200", "model.latent_dim=2", "net.encoder.hidden_dim=16",
            "net.decoder.hidden_dim=16", "logger=csv", "callbacks=none", "trainer=cpu"]


def max_concurrent(intervals: list[tuple[float, float]]) -> int:
    """Most intervals open at one instant (an end at the instant another starts counts as before it)."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def per_device_intervals(jobs: dict[int, tuple[str, float, float]]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list] = {}
    for device, start, end in jobs.values():
        out.setdefault(device, []).append((start, end))
    return out


def test_four_jobs_over_two_gpus_two_per_gpu(mirror, tmp_path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "seed=0,1,2,3", *TINY_JOB, "hydra/launcher=gpu_parallel", "hydra.launcher.gpus=[0,1]",
                   "hydra.launcher.runs_per_gpu=2", f"hydra.sweep.dir={sweep}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for j in range(4):
        summary = json.loads((sweep / str(j) / "summary.json").read_text())
        assert summary["samples_seen"] == 200 and summary["device"] == "cpu"
        # the job saw exactly one device; start = Hydra writing the job's config, end = its summary
        started = (sweep / str(j) / ".hydra" / "config.yaml").stat().st_mtime
        ended = (sweep / str(j) / "summary.json").stat().st_mtime
        jobs[j] = (summary["cuda_visible_devices"], started, ended)
    assert {j: d for j, (d, _, _) in jobs.items()} == {0: "0", 1: "1", 2: "0", 3: "1"}  # round-robin
    by_device = per_device_intervals(jobs)
    assert {d: len(v) for d, v in by_device.items()} == {"0": 2, "1": 2}
    assert all(max_concurrent(v) <= 2 for v in by_device.values())
    assert "4 of 4 jobs finished" in proc.stdout


APP = """
import json, os, time
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(config_path=".", config_name="app", version_base="1.3")
def task(cfg):
    start = time.time()
    if cfg.x == cfg.crash:
        os._exit(3)  # dies without a result, as a job killed for memory would
    time.sleep(cfg.long_s if cfg.x == 0 else 0.3)
    out = os.path.join(HydraConfig.get().runtime.output_dir, "seen.json")
    json.dump({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start, "end": time.time()}, open(out, "w"))

if __name__ == "__main__":
    task()
"""


def test_one_run_per_gpu_queues_jobs_and_records_a_dead_job(tmp_path):
    """Six jobs, two fake GPUs, runs_per_gpu=1: jobs wait for a free GPU, never two on one GPU;
    a job whose process dies gets failed.json and the others go on. No torch: a trivial Hydra task."""
    (tmp_path / "app.py").write_text(APP)
    (tmp_path / "app.yaml").write_text(textwrap.dedent(f"""\
        defaults:
          - override hydra/launcher: gpu_parallel
          - _self_
        x: 0
        crash: 5
        long_s: 2.0
        hydra:
          searchpath: [file://{REPO / 'conf'}]
          sweep: {{dir: {tmp_path / 'sweep'}, subdir: '${{hydra.job.num}}'}}
        """))
    proc = subprocess.run([sys.executable, str(tmp_path / "app.py"), "-m", "x=0,1,2,3,4,5",
                           "hydra.launcher.gpus=[a,b]", "hydra.launcher.runs_per_gpu=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = {}
    for j in range(5):
        seen = json.loads((sweep / str(j) / "seen.json").read_text())
        jobs[j] = (seen["cvd"], seen["start"], seen["end"])
    assert jobs[0][0] == "a" and jobs[1][0] == "b"  # the first wave goes round-robin
    by_device = per_device_intervals(jobs)
    assert set(by_device) == {"a", "b"}
    assert all(max_concurrent(v) == 1 for v in by_device.values())
    failed = json.loads((sweep / "5" / "failed.json").read_text())
    assert failed["status"] == "failed" and "ended without a result (exit code 3)" in failed["error"]
    assert "job 5 failed" in proc.stderr


def test_no_gpu_and_none_named_is_one_error_line():
    proc = run_cli("-m", "seed=0,1", *TINY_JOB, "hydra/launcher=gpu_parallel", env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert_one_line_error(proc, "hydra/launcher=gpu_parallel found no GPU", "hydra.launcher.gpus=[0,1]")


def test_submitit_local_jobs_see_the_launching_process_gpus(monkeypatch):
    """The callback's rule, in one process: read CUDA_VISIBLE_DEVICES where the sweep is launched,
    then give it back in the job that submitit_local started with CUDA_VISIBLE_DEVICES="" (0 GPUs)."""
    from omegaconf import OmegaConf

    from aevb.placement import SubmititLocalGpus

    def job_sees(launching, gpus_per_node, executor="local", submitit_sets=""):
        if launching is None:
            monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        else:
            monkeypatch.setenv("CUDA_VISIBLE_DEVICES", launching)
        callback = SubmititLocalGpus()  # built in the launching process
        monkeypatch.setenv("SUBMITIT_EXECUTOR", executor)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", submitit_sets)  # what submitit's local executor sets
        callback.on_job_start(config=OmegaConf.create({"hydra": {"launcher": {"gpus_per_node": gpus_per_node}}}))
        return os.environ.get("CUDA_VISIBLE_DEVICES")

    assert job_sees("3,5", None) == "3,5"
    assert job_sees("3,5", 1, submitit_sets="0") == "3"
    assert job_sees(None, None) is None  # unset: every GPU of the node
    assert job_sees(None, 2, submitit_sets="0,1") == "0,1"
    assert job_sees("3,5", None, executor="slurm", submitit_sets="7") == "7"  # SLURM places GPUs itself
