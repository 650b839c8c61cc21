"""A stop signal to a sweep whose jobs run in processes of their own (gpu_parallel, packed).

The process the user started only launches and waits; the jobs train in its children. A signal sent
to it alone (``kill <pid>``) is passed on to every running job process, which stops at its current
step with a checkpoint and status.json as a single run does, and no further job is started. A signal
to the whole process group (Ctrl-C in a terminal, ``kill -- -<pgid>``, a scheduler) reaches the jobs
directly; the launching process passes SIGINT on as SIGTERM, since a second SIGINT would stop a job at
once. A signal sent to one job process only stops that job; the others run on. Either way an
interrupted job is reported as interrupted, never as failed, and the sweep ends with one line naming
each interrupted job and its resume command, and exit status 128 + the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from aevb.stop_signals import STOP_SIGNALS, take_early_stop

PROG = "aevb-train"


class ForwardStops:
    """While a sweep's job processes run: remember the first stop signal and pass each one on to them."""

    def __init__(self, pids: Callable[[], list[int]]):
        self.pids = pids
        self.received: signal.Signals | None = None
        self._previous: dict = {}

    def __enter__(self) -> "ForwardStops":
        self.received = take_early_stop()  # one that came while the sweep was being set up
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame) -> None:
        self.received = self.received or signal.Signals(signum)
        forward = signal.SIGTERM if signum == signal.SIGINT else signum
        for pid in self.pids():
            try:
                os.kill(pid, forward)
            except ProcessLookupError:  # it has just ended
                pass

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)


def interrupted_status(job_dir: Path) -> dict | None:
    """The job's status.json if it says the job was interrupted (and saved how to resume), else None."""
    from aevb.run_control import read_status

    status = read_status(job_dir)
    return status if status.get("status") == "interrupted" else None


def end_interrupted_sweep(received: signal.Signals | None, interrupted: dict[int, dict],
                          not_started: list[int]) -> None:
    """If the sweep was stopped (a signal to this process, or jobs interrupted): one line, exit 128 + signal."""
    if received is None and not interrupted:
        return
    from aevb.packed.launch import job_list

    sig = received or signal.Signals[next(iter(interrupted.values())).get("signal", "SIGTERM")]
    parts = []
    if interrupted:
        parts.append(f"job(s) {job_list(list(interrupted))} stopped with a checkpoint; resume each with: " + " ; ".join(
            f"job {idx}: {status.get('resume')}" for idx, status in sorted(interrupted.items())))
    if not_started:
        parts.append(f"job(s) {job_list(not_started)} had not started")
    what = (f"sweep interrupted by {sig.name}" if received is not None
            else f"sweep ended with job(s) interrupted by {sig.name} (sent to them, not to the sweep)")
    print(f"{PROG}: {what}: " + "; ".join(parts or ["no job was running"]), file=sys.stderr, flush=True)
    sys.exit(128 + int(sig))
