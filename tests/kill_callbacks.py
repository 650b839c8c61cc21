"""Test-only callbacks, loaded into a real aevb-train subprocess through +callbacks.<name>._target_=...:
they stop the process at an exact point, as a crash or a scheduler would."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Send ``sig`` (a name: SIGKILL, SIGTERM, SIGINT, SIGUSR1) to this process at ``step``, after that
    training step (``where=train``) or at the first validation batch from that step on (``where=validation``)."""

    def __init__(self, step: int, sig: str = "SIGKILL", where: str = "train"):
        self.step, self.sig, self.where = step, getattr(signal, sig), where
        self.sent = False

    def on_train_start(self, trainer, pl_module) -> None:
        # a run resumed from at or past ``step`` (by a printed resume command that repeats this callback's
        # overrides) has had its signal already
        self.sent = trainer.global_step >= self.step

    def _maybe_send(self, trainer) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            os.kill(os.getpid(), self.sig)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "train":
            self._maybe_send(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "validation" and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._maybe_send(trainer)

