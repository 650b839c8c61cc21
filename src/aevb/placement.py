"""Which GPU a sweep job sees: one GPU per job (gpu_parallel) or per pack (packed), the node's GPUs for submitit_local.

A job is pinned to a device through CUDA_VISIBLE_DEVICES, set in the job's own
process before anything in it can initialise CUDA; inside the job the device is
then ``cuda:0`` and ``trainer=gpu`` (devices: 1) needs no change.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import sys
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, open_dict

from aevb.errors import ConfigError
from aevb.sweep_stop import ForwardStops, end_interrupted_sweep, interrupted_status

log = logging.getLogger(__name__)
JOIN_TIMEOUT_S = 120  # a job that has handed back its result but does not exit is stopped after this


def visible_gpus(given: Any = None) -> list[str]:
    """The GPU ids jobs may be pinned to: ``given`` if not None, else those CUDA_VISIBLE_DEVICES
    names that exist (all of torch.cuda.device_count() when it is unset)."""
    if given is not None:
        if not isinstance(given, (list, tuple, ListConfig)):
            raise ConfigError(f"hydra.launcher.gpus must be a list of GPU ids such as [0,1], got {given!r}")
        return [str(g).strip() for g in given]
    import torch

    count = torch.cuda.device_count()  # counts only the devices CUDA_VISIBLE_DEVICES leaves visible
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return [str(i) for i in range(count)]
    return [d.strip() for d in env.split(",") if d.strip()][:count]


def pick_slot(load: list[int], start: int, runs_per_gpu: int) -> int:
    """Round-robin from ``start``: the least-loaded GPU with a free slot (ties: the first from start)."""
    n = len(load)
    order = [(start + k) % n for k in range(n)]
    free = [i for i in order if load[i] < runs_per_gpu]
    return min(free, key=lambda i: load[i])


def launch_on_gpus(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list:
    """Run every job in a fresh process pinned to one GPU, at most ``runs_per_gpu`` per GPU at once."""
    units = [[pos] for pos in range(len(job_overrides))]
    return launch_units(launcher, job_overrides, initial_job_idx, units, launcher.gpu_list(), launcher.runs_per_gpu,
                        "gpu_parallel")


def launch_units(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int, units: list[list[int]],
                 slots: list, per_slot: int, name: str) -> list:
    """Run each unit (a list of job positions: one job, or a pack of jobs trained together, aevb.packed)
    in a fresh process; ``slots`` are GPU ids (the process sees only its GPU) or [None] (no pinning),
    at most ``per_slot`` units per slot at a time. Returns one JobReturn per job, in job order. A stop
    signal goes on to the running processes and starts no more (aevb.sweep_stop)."""
    from hydra.core.utils import setup_globals

    setup_globals()
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    where = "CPU" if slots == [None] else f"GPUs {','.join(slots)}"
    log.info(f"{name}: {len(job_overrides)} jobs in {len(units)} processes on {where}, at most {per_slot} per"
             f" {'GPU' if slots != [None] else 'node'} at a time; sweep output dir: {sweep_dir}")
    units_run = _Units(launcher, job_overrides, initial_job_idx, units, slots, per_slot)
    stops = ForwardStops(units_run.pids)
    try:
        with stops:
            units_run.run(stopped=lambda: stops.received is not None)
    finally:
        units_run.kill_running()  # interrupted: leave no job behind
    not_started = [initial_job_idx + pos for u in units_run.pending for pos in units[u]]
    end_interrupted_sweep(stops.received, units_run.interrupted, not_started)
    return units_run.results


class _Units:
    """launch_units' processes: started while a slot is free, their results read as they come."""

    def __init__(self, launcher, job_overrides, initial_job_idx: int, units: list[list[int]], slots: list,
                 per_slot: int):
        from hydra.core.singleton import Singleton

        self.launcher, self.job_overrides, self.first = launcher, job_overrides, initial_job_idx
        self.units, self.slots, self.per_slot = units, slots, per_slot
        self.ctx = mp.get_context("spawn")  # a fresh interpreter per process: CUDA (maybe set up here) not inherited
        self.singleton_state = Singleton.get_state()
        self.load, self.next_slot = [0] * len(slots), 0
        self.pending = list(range(len(units)))
        self.running: dict = {}  # receiving end of the process's pipe -> (unit number, slot, process)
        self.results: list = [None] * len(job_overrides)
        self.interrupted: dict[int, dict] = {}  # job number -> its status.json (stopped by a signal, resumable)

    def pids(self) -> list[int]:
        return [proc.pid for _, _, proc in list(self.running.values()) if proc.pid]

    def run(self, stopped) -> None:
        while (self.pending and not stopped()) or self.running:
            while self.pending and not stopped() and min(self.load) < self.per_slot:
                self._start(self.pending.pop(0))
            for recv in wait(list(self.running)):  # read results as they come: a full pipe would block the process
                self._collect(recv)

    def _start(self, u: int) -> None:
        import cloudpickle
        from hydra.core.utils import filter_overrides

        slot = pick_slot(self.load, self.next_slot, self.per_slot)
        self.next_slot = (slot + 1) % len(self.slots)
        jobs = [(self.first + pos, self.job_overrides[pos]) for pos in self.units[u]]
        payload = cloudpickle.dumps((jobs, self.launcher.hydra_context, self.launcher.config,
                                     self.launcher.task_function, self.singleton_state))
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_unit_process, args=(self.slots[slot], payload, send), name=f"sweep-unit-{u}")
        proc.start()
        send.close()  # only the process holds the sending end now: its exit means EOF here
        self.load[slot] += 1
        self.running[recv] = (u, slot, proc)
        on = f" on GPU {self.slots[slot]}" if self.slots[slot] is not None else ""
        for idx, overrides in jobs:
            pack = f" (pack of {len(jobs)})" if len(jobs) > 1 else ""
            log.info(f"\t#{idx}{on}{pack} : {' '.join(filter_overrides(overrides))}")

    def _collect(self, recv) -> None:
        import cloudpickle

        u, slot, proc = self.running.pop(recv)
        try:
            data = recv.recv_bytes()
        except EOFError:
            data = None
        recv.close()
        proc.join(JOIN_TIMEOUT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self.load[slot] -= 1
        rets = cloudpickle.loads(data) if data is not None else None
        for i, pos in enumerate(self.units[u]):
            self.results[pos] = (rets[i] if rets is not None else
                                 _record_crash(self.launcher, self.job_overrides[pos], self.first + pos,
                                               self.slots[slot], proc.exitcode, self.interrupted))

    def kill_running(self) -> None:
        for _, _, proc in self.running.values():
            proc.kill()
            proc.join()


def _unit_process(gpu, payload: bytes, conn) -> None:
    """Entry point of a sweep process: pin the GPU first, then run its job (as Hydra's joblib launcher
    does) or its pack of jobs (aevb.packed.launch.run_pack)."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    import cloudpickle
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    jobs, hydra_context, config, task_function, singleton_state = cloudpickle.loads(payload)
    if len(jobs) == 1:
        rets = [execute_job(*jobs[0], hydra_context, config, task_function, singleton_state)]
    else:
        from aevb.packed.launch import run_pack

        rets = run_pack(jobs, hydra_context, config, task_function, singleton_state)
    conn.send_bytes(cloudpickle.dumps(rets))
    conn.close()


def _record_crash(launcher, overrides: Sequence[str], idx: int, gpu: str, exitcode: int | None,
                  interrupted: dict[int, dict]):
    """A job process that died without a result (killed, out of memory, a crash in native code) is
    recorded as aevb records a failed job: failed.json in its folder, the sweep goes on. A job that a
    stop signal interrupted (its status.json says so, with its checkpoint) goes into ``interrupted``."""
    from hydra.core.utils import JobReturn, JobStatus

    from aevb.atomic import write_json_atomic

    job_dir = _job_dir(launcher, overrides, idx)
    status = interrupted_status(job_dir)
    if status is not None and not (job_dir / "summary.json").is_file():
        interrupted[idx] = status
    if status is not None or (job_dir / "summary.json").is_file():  # stopped, or a pack's finished member
        ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir), status=JobStatus.COMPLETED)
        ret.return_value = None
        return ret
    how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    message = f"job process{f' on GPU {gpu}' if gpu is not None else ''} ended without a result ({how})"
    job_dir.mkdir(parents=True, exist_ok=True)
    if not (job_dir / "failed.json").is_file():  # keep the job's own record of its failure, if it wrote one
        write_json_atomic(job_dir / "failed.json", {"status": "failed", "error": message})
    print(f"aevb-train: error: job {idx} failed: {message}", file=sys.stderr, flush=True)
    # COMPLETED with no value, as aevb-train's own handler returns for a failed job: the sweep
    # report (aevb.sweep.SweepSummary) then names it and the exit status is 1.
    ret = JobReturn(overrides=list(overrides), working_dir=str(job_dir), status=JobStatus.COMPLETED)
    ret.return_value = None
    return ret


def _job_dir(launcher, overrides: Sequence[str], idx: int) -> Path:
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    try:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = idx
        return sweep_dir / str(cfg.hydra.sweep.subdir)
    except Exception:  # an unusual subdir pattern: fall back to Hydra's default, the job number
        return sweep_dir / str(idx)


class SubmititLocalGpus(Callback):
    """hydra/launcher=submitit_local without hiding the GPUs.

    submitit's local executor sets CUDA_VISIBLE_DEVICES to range(gpus_per_node) for every job,
    so the default (null, i.e. 0) hides every GPU, and any other value ignores the GPU list of
    the launching process. This callback gives each submitit_local job the GPUs the launching
    process sees: all of them when hydra.launcher.gpus_per_node is null, the first N when it is N.
    It does nothing under any other launcher.
    """

    def __init__(self) -> None:
        self.launching_env = os.environ.get("CUDA_VISIBLE_DEVICES")  # read where the sweep is launched

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        if os.environ.get("SUBMITIT_EXECUTOR") != "local":
            return
        n = config.hydra.launcher.get("gpus_per_node")
        if self.launching_env is None:
            if n is None:
                os.environ.pop("CUDA_VISIBLE_DEVICES", None)  # every GPU of the node
            return  # n set: submitit's 0..n-1 are the node's first n GPUs
        ids = [d.strip() for d in self.launching_env.split(",") if d.strip()]
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids if n is None else ids[:int(n)])
