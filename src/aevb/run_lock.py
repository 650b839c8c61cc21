"""One live run per run folder: a second ``aevb-train`` started in a folder a run is using is refused.

Two runs writing one folder mix their configs, checkpoints and CSV rows (and both fail). The
lock is ``.aevb.lock`` in the run folder, held with ``flock`` for the life of the process: the
kernel releases it when the process ends, however it ends, so the lock of a dead run (SIGKILL,
a crashed node) is free and the next run takes it over. The file names the holder (pid, host)
for the refusal's message. Taken before Hydra writes anything when the run folder is named on
the command line (``aevb.cli.preflight``), and again, by the same process, once the folder is known.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from aevb.errors import ConfigError

LOCK_FILE = ".aevb.lock"
_HELD: dict[Path, int] = {}
RANK_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set for DDP's ranks; rank 0 alone holds the lock


class RunFolderInUse(ConfigError):
    """Another live run holds the folder: nothing of this run may be written or cleaned up there."""


def is_rank_zero() -> bool:
    """This process is rank 0 of its run, or the run has one process (DDP's other ranks reuse rank 0's folder)."""
    return all(os.environ.get(name, "0") in ("", "0") for name in RANK_ENV)  # run folder -> descriptor of its lock, held by this process


def acquire(run_dir: Path, key: str = "hydra.run.dir") -> None:
    """Hold the run folder's lock (creating the folder); ConfigError naming the live holder if another has it."""
    run_dir = Path(run_dir).absolute()
    if run_dir in _HELD or not is_rank_zero():
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").split()
        os.close(fd)
        who = f"pid {holder[0]} on {holder[1]}" if len(holder) >= 2 else "another process"
        raise RunFolderInUse(f"{key}={run_dir} is in use by another aevb-train run ({who}); wait for it to end, or"
                          " choose another folder") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _HELD[run_dir] = fd


def release(run_dir: Path) -> None:
    """Let go of the run folder's lock (a sweep's job that ended; the file stays, unlocked)."""
    fd = _HELD.pop(Path(run_dir).absolute(), None)
    if fd is not None:
        os.close(fd)


def holds(run_dir: Path) -> bool:
    return Path(run_dir).absolute() in _HELD
