"""The signals that stop a run (SIGTERM, SIGINT, SIGUSR1), and those that arrive before training starts.

Until training starts (Python and library imports, building, loading data) no checkpoint exists yet,
and a signal's default action would end the process with nothing recorded. ``catch_early_stops``
remembers such a signal instead; aevb.run_control.GracefulStop takes it at the start of training and
stops the run at its first step, with a checkpoint, status.json and, for SIGUSR1 under SLURM, a
requeue. Kept free of heavy imports so that aevb-train can install it first thing.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
_EARLY: dict = {"signal": None, "installed": False}


def catch_early_stops() -> None:
    """Remember stop signals from now until training starts (main thread only; idempotent). A second
    Ctrl-C still stops at once."""
    if _EARLY["installed"] or threading.current_thread() is not threading.main_thread():
        return

    def handler(signum, frame):
        if _EARLY["signal"] is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        _EARLY["signal"] = signal.Signals(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, handler)
    _EARLY["installed"] = True


def take_early_stop() -> signal.Signals | None:
    """The stop signal that arrived before training started, if any (forgotten once taken)."""
    early, _EARLY["signal"] = _EARLY["signal"], None
    return early
