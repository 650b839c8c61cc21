"""Checkpoints written atomically: a temporary file beside the final name, fsync'ed, then renamed.

A crash or a full disk mid-write therefore never leaves a truncated ``last.ckpt``:
the previous one stays in place, and the failure is one line, not a traceback.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from aevb.errors import AevbError


class CheckpointWriteError(AevbError):
    """A checkpoint could not be written (disk full, no permission...)."""


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            kept = f"; the previous {path.name} is intact" if path.exists() else ""
            raise CheckpointWriteError(f"could not write checkpoint {path}: {exc.strerror or exc}{kept}") from None
