"""Test-only callbacks, loaded into a real aevb-train subprocess through +callbacks.<name>._target_=...:
they stop the process at an exact point, as a crash or a scheduler would."""

from __future__ import annotations

import os
import signal

import lightning as L


class SignalAt(L.Callback):
    """Send ``sig`` (a name: SIGKILL, SIGTERM, SIGINT, SIGUSR1) to this process at ``step``, after that
    training step (``where=train``), at the first validation batch from that step on (``where=validation``), or at
    the end of the epoch that holds that step (``where=epoch_end``: after its last step's checkpoint), or before
the first training batch from that step on (``where=next_batch``: after an epoch-end checkpoint). ``target``:
    this process (``self``), its parent (``parent``) or its process group (``group``); ``times``: how often."""

    def __init__(self, step: int, sig: str = "SIGKILL", where: str = "train", target: str = "self",
                 times: int = 1):
        self.step, self.sig, self.where, self.target, self.times = step, getattr(signal, sig), where, target, times
        self.sent = False

    def on_train_start(self, trainer, pl_module) -> None:
        # a resumed run (by a printed resume command that repeats this callback's overrides) has had its signal
        # already, even one resumed from a checkpoint before ``step`` (a second Ctrl-C keeps an earlier one)
        self.sent = trainer.global_step >= self.step or trainer.ckpt_path is not None

    def _maybe_send(self, trainer) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            for _ in range(self.times):  # twice: a second Ctrl-C before the step that got the first one ends
                if self.target == "group":  # the whole process group (as Ctrl-C in a terminal, or a scheduler)
                    os.killpg(os.getpgid(0), self.sig)
                else:  # "parent": the process that started this one (a sweep's launching process)
                    os.kill(os.getppid() if self.target == "parent" else os.getpid(), self.sig)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.where == "train":
            self._maybe_send(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # before the first step after ``step``: whatever the end of the previous one saved (Lightning runs its
        # checkpoint callbacks after every other callback's hook, epoch ends included) is on disk by now
        if self.where == "next_batch":
            self._maybe_send(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        # after the epoch's last step and the validation (and checkpoint) that step triggers
        if self.where == "epoch_end":
            self._maybe_send(trainer)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if self.where == "validation" and trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._maybe_send(trainer)

