"""A run that is stopped never looks like a success and never loses what it had.

``GracefulStop`` turns SIGTERM (what SLURM pre-emption and ``kill`` send), SIGINT (Ctrl-C)
and SIGUSR1 (SLURM's warning before the time limit, with ``--signal=USR1@N``) into a stop at
the end of the current training step: Lightning's own SIGTERM flag is set, the loop raises
at the step boundary, and this callback then saves ``checkpoints/last.ckpt`` at that step,
writes ``status.json`` (``interrupted``, the step and the command that resumes it) and,
for SIGUSR1 under SLURM, requeues the job. ``aevb-train`` then exits with 128 + the signal
number. A requeued SLURM job finds that status and resumes from the checkpoint by itself
(``resume_after_requeue``). A second Ctrl-C stops at once, inside the step: status.json then names the
last checkpoint written before it, and the exit status is 130 all the same.

``ContinueLogs`` makes loggers that can (``ResumableCSVLogger``) keep the rows a resumed
run had already written, up to the step it resumes from.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import threading
from pathlib import Path

import lightning as L
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.exceptions import SIGTERMException

from aevb.atomic import write_json_atomic
from aevb.stop_signals import STOP_SIGNALS, take_early_stop

STATUS_FILE = "status.json"


class RunInterrupted(SystemExit):
    """Raised after an interrupted run saved its state; its code is 128 + the signal number."""


def write_status(run_dir: Path, payload: dict) -> Path:
    path = Path(run_dir) / STATUS_FILE
    write_json_atomic(path, payload)
    return path


def read_status(run_dir: Path) -> dict:
    try:
        return json.loads((Path(run_dir) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}


STARTED_BY_ENV = "AEVB_STARTED_BY"  # "make train" when the Makefile started the run
_HYDRA_PLAIN = re.compile(r"[A-Za-z0-9_./:@%+\-]*")  # characters Hydra's override grammar takes unquoted


def hydra_value(value: str) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged: quoted (and escaped) unless plain ASCII."""
    if _HYDRA_PLAIN.fullmatch(value):
        return value
    escaped = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, value).replace("'", "\\'")
    return f"'{escaped}'"


def resume_command(ckpt: Path | None, run_dir: Path) -> str:
    """The command that resumes this run in its own folder, to be pasted into a shell as printed: the way the
    run was started (``make train ARGS=...`` or this environment's aevb-train by absolute path), the run's
    own overrides, and the data mirror when it came from $AEVB_DATA_MIRROR."""
    import sys

    from aevb.data.sources import MIRROR_ENV

    try:
        from hydra.core.hydra_config import HydraConfig

        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.startswith(("ckpt_path=", "hydra.run.dir=", "hydra/launcher=", "hydra.launcher."))]
    except ValueError:  # not inside a Hydra run
        overrides = []
    overrides += [f"ckpt_path={hydra_value(str(ckpt))}"] if ckpt is not None else []  # None: start over
    overrides += [f"hydra.run.dir={hydra_value(str(run_dir))}"]
    args = shlex.join(overrides)
    if os.environ.get(STARTED_BY_ENV) == "make train":
        command = f"make train ARGS={shlex.quote(args.replace('$', '$$'))}"  # make expands $ in ARGS once
    else:
        script = Path(sys.executable).absolute().with_name("aevb-train")
        launcher = [str(script)] if script.is_file() else [str(Path(sys.executable).absolute()), "-m", "aevb.train"]
        command = f"{shlex.join(launcher)} {args}"
    mirror = os.environ.get(MIRROR_ENV)
    return f"{MIRROR_ENV}={shlex.quote(str(Path(mirror).absolute()))} {command}" if mirror else command


def resume_after_requeue(run_dir: Path) -> Path | None:
    """Under SLURM, a requeued job (SLURM_RESTART_COUNT > 0) resumes from the checkpoint its last attempt saved:
    the one status.json names after an interruption, else (killed outright) the run's last.ckpt."""
    if int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) < 1:
        return None
    status = read_status(run_dir)
    if status.get("status") == "interrupted":
        ckpt = Path(status.get("checkpoint") or "")
    else:
        ckpt = Path(run_dir) / "checkpoints" / "last.ckpt"
    return ckpt if ckpt.is_file() and status.get("status") != "finished" else None


def requeue_slurm_job() -> str | None:
    """``scontrol requeue`` this job (array task aware); returns the job id, or None if not under SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return None
    subprocess.run(["scontrol", "requeue", job], check=False, capture_output=True)
    return job


_THREAD_STOPS: list = []  # GracefulStops of runs in threads other than the main one (packed sweeps)
_PACK_SIGNAL: dict = {"signal": None}  # the first stop signal to a pack's process: members that start later take it


def dispatch_to_threads() -> None:
    """In the main thread: hand every stop signal to the runs of the other threads (a pack's members), and
    to those that start training later (a signal while a member is still being built is not lost)."""
    _PACK_SIGNAL["signal"] = take_early_stop()

    def handler(signum, frame):
        _PACK_SIGNAL["signal"] = _PACK_SIGNAL["signal"] or signal.Signals(signum)
        for stop in list(_THREAD_STOPS):
            stop._thread_handlers[signum](signum, frame)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)


class GracefulStop(L.Callback):
    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._previous: dict = {}
        self._saving = False  # while the stop's checkpoint is written, a second Ctrl-C waits for it

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after Lightning registered its own SIGTERM handler (at fit start), which we chain to
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            # a member of a packed sweep (aevb.packed): only the main thread may set handlers;
            # it forwards every stop signal to the runs registered here (dispatch_to_threads)
            self._thread_handlers = {sig: self._make_handler(trainer, sig) for sig in STOP_SIGNALS}
            _THREAD_STOPS.append(self)
            if _PACK_SIGNAL["signal"] is not None:  # it came while this member was being built
                self.received = _PACK_SIGNAL["signal"]
                trainer._signal_connector.received_sigterm = True
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._make_handler(trainer, sig))
        early = take_early_stop()
        if early is not None:  # it came while the run was being built: stop at the first step boundary
            self.received = early
            trainer._signal_connector.received_sigterm = True

    def _make_handler(self, trainer: L.Trainer, sig: signal.Signals):
        previous = self._previous.get(sig)

        def handler(signum, frame):
            if self.received is not None and sig == signal.SIGINT and not self._saving:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now (on_exception records it)
            self.received = self.received or signal.Signals(signum)
            if sig == signal.SIGTERM and callable(previous):
                previous(signum, frame)  # Lightning's: sets the flag and tells the other DDP ranks
            trainer._signal_connector.received_sigterm = True  # the loops stop at the next step boundary
        return handler

    def _restore_handlers(self) -> None:
        if self in _THREAD_STOPS:
            _THREAD_STOPS.remove(self)
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore_handlers()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore_handlers()
        if self.received is None or not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        run_dir = Path(trainer.default_root_dir)
        ckpt_dir = Path(trainer.checkpoint_callback.dirpath) if trainer.checkpoint_callback else run_dir / "checkpoints"
        ckpt = (ckpt_dir / "last.ckpt").resolve()
        if isinstance(exception, KeyboardInterrupt):  # a second Ctrl-C, inside a step: its state is half-updated
            self._stopped_at_once(trainer, pl_module, run_dir, ckpt)
        self._saving = True
        try:
            trainer.save_checkpoint(ckpt)  # refuses (DivergedError) if the model has diverged
        finally:
            self._saving = False
        requeued = requeue_slurm_job() if self.received == signal.SIGUSR1 and trainer.is_global_zero else None
        if trainer.is_global_zero:
            write_status(run_dir, {
                "status": "interrupted", "signal": self.received.name, "step": int(trainer.global_step),
                "samples_seen": int(getattr(pl_module, "samples_seen", 0)), "checkpoint": str(ckpt),
                "resume": resume_command(ckpt, run_dir.resolve()), "requeued_slurm_job": requeued,
            })
        raise RunInterrupted(128 + int(self.received))

    def _stopped_at_once(self, trainer, pl_module, run_dir: Path, ckpt: Path) -> None:
        """A second Ctrl-C stopped the run in the middle of a step: nothing of that moment is saved; status.json
        points at the last checkpoint written before (if any), and the run exits 130 as after one Ctrl-C."""
        import torch

        kept = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True) if ckpt.is_file() else None
        if trainer.is_global_zero:
            write_status(run_dir, {
                "status": "interrupted", "signal": "SIGINT", "at_once": True,
                "step": int(kept["global_step"]) if kept else 0,
                "samples_seen": int(kept.get("samples_seen", 0)) if kept else 0,
                "stopped_at_step": int(trainer.global_step), "checkpoint": str(ckpt) if kept else None,
                "resume": resume_command(ckpt if kept else None, run_dir.resolve()), "requeued_slurm_job": None,
            })
        raise RunInterrupted(128 + int(signal.SIGINT))


class ResumableExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, except that it keeps an existing metrics.csv instead of deleting it."""

    def _check_log_dir_exists(self) -> None:
        pass

    def drop_rows_after(self, step: int) -> None:
        import csv

        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as f:
            reader = csv.DictReader(f)
            keys, rows = list(reader.fieldnames or []), [r for r in reader if int(float(r["step"])) <= step]
        with open(self.metrics_file_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = keys


class ResumableCSVLogger(CSVLogger):
    """CSVLogger whose metrics.csv continues across a resume (rows past the resumed step are dropped)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ResumableExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = ResumableExperimentWriter(log_dir=self.log_dir)
        return self._experiment

    def drop_rows_after(self, step: int) -> None:
        self.experiment.drop_rows_after(step)


class ContinueLogs(L.Callback):
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                if hasattr(logger, "drop_rows_after"):
                    logger.drop_rows_after(trainer.global_step)
