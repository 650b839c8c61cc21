"""Test-only callback for jobs on the real SLURM of tests/test_slurm.py, loaded through
+callbacks.<name>._target_=slurm_callbacks.PauseAt: it holds a job at an exact step until SLURM's
signal arrives, so the test signals a running job at a known step (never racing its end)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import lightning as L


class PauseAt(L.Callback):
    """After training step ``step`` of a job's first attempt, write ``paused.json`` in the run folder and
    wait (at most ``wait_s``) until a stop signal reached aevb's handler. Every attempt's start is
    appended to ``attempts.jsonl``: the SLURM restart count and the step training starts from."""

    def __init__(self, step: int | None = None, wait_s: float = 300.0):
        self.step, self.wait_s = step, wait_s

    @staticmethod
    def _job() -> str | None:
        """This job as scontrol and scancel name it: an array task is <array job>_<task> (the bare
        SLURM_JOB_ID of one task can equal the array's id, which names every task of the array)."""
        if os.environ.get("SLURM_ARRAY_JOB_ID") and os.environ.get("SLURM_ARRAY_TASK_ID"):
            return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
        return os.environ.get("SLURM_JOB_ID")

    def _attempt(self) -> int:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0)

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            with open(Path(trainer.default_root_dir) / "attempts.jsonl", "a") as f:
                f.write(json.dumps({"restart_count": self._attempt(), "start_step": int(trainer.global_step),
                                    "slurm_job": self._job()}) + "\n")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.step is None or trainer.global_step != self.step or self._attempt() > 0:
            return
        marker = Path(trainer.default_root_dir) / "paused.json"
        marker.write_text(json.dumps({"step": self.step, "slurm_job": self._job(),
                                      "pid": os.getpid()}))
        deadline = time.monotonic() + self.wait_s
        while not trainer._signal_connector.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.2)
