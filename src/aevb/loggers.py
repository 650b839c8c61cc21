"""Lightning's wandb and TensorBoard loggers, adjusted to what a dashboard of this project needs.

* wandb: ``samples_seen`` (training datapoints evaluated, Figure 2's x-axis) is the step metric of the
  ELBO and curve metrics; wandb's own console chatter is off (warnings and errors stay), and the
  deprecated ``anonymous`` setting Lightning always passes is dropped.
* TensorBoard: one event file per run. Lightning closes the writer after ``fit`` and after every
  ``test`` call, and the next write opens a new file; here ``finalize`` only flushes and ``close``
  ends the file once the run is over. ``hp_metric`` is not logged as -1 at the start but as the
  final test ELBO at the end (aevb.dashboards).
"""

from __future__ import annotations

import os

from lightning.pytorch.loggers import TensorBoardLogger as _TensorBoardLogger
from lightning.pytorch.loggers import WandbLogger as _WandbLogger
from lightning.pytorch.utilities import rank_zero_only

from aevb.packed.coordinator import active_pack
from aevb.wandb_mode import setup_wandb, wait_for_prestart

# metric families drawn against samples_seen in wandb (every family this project logs)
SAMPLES_AXIS_GLOBS = ("train/*", "val/*", "curve/*", "marginal/*", "final/*", "images/*")


class WandbLogger(_WandbLogger):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous") is None:
            self._wandb_init.pop("anonymous", None)

    @property
    def experiment(self):
        new = self._experiment is None
        if new and os.environ.get("AEVB_VERBOSE", "") in ("", "0"):
            wait_for_prestart()  # (aevb.train may have started the set-up in the background)
            setup_wandb(self._offline)  # info lines off; warnings and errors stay
        if new and active_pack() is not None:  # several runs in this process (a packed sweep): one wandb run each
            self._wandb_init.setdefault("reinit", "create_new")
        run = super().experiment
        if new and rank_zero_only.rank == 0 and getattr(run, "define_metric", None):
            run.define_metric("samples_seen")
            for glob in SAMPLES_AXIS_GLOBS:  # defined after Lightning's "*" -> trainer/global_step, so they win
                run.define_metric(glob, step_metric="samples_seen", step_sync=True)
        return run


class TensorBoardLogger(_TensorBoardLogger):
    def __init__(self, *args, default_hp_metric: bool = False, **kwargs):
        super().__init__(*args, default_hp_metric=default_hp_metric, **kwargs)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._experiment is not None:
            self.experiment.flush()
        if status == "success":
            self.save()

    @rank_zero_only
    def close(self) -> None:
        if self._experiment is not None:
            self.experiment.close()
