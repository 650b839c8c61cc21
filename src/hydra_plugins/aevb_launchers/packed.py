"""hydra/launcher=packed: the jobs of a multirun that can share one program trained together, one process per pack.

The grouping and a pack's process are in aevb.packed (imported only on launch, since Hydra
imports every plugin module at start-up); the processes are placed as gpu_parallel places
its jobs: round-robin over the node's GPUs, ``packs_per_gpu`` at a time, or one after another
(``cpu_parallel`` at a time) where there is no GPU.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

log = logging.getLogger(__name__)


class PackedLauncher(Launcher):
    def __init__(self, max_pack: int = 16, gpus: Any = None, packs_per_gpu: int = 1, cpu_parallel: int = 1,
                 pad_latents: Any = "auto") -> None:
        self.max_pack, self.gpus, self.packs_per_gpu, self.cpu_parallel = max_pack, gpus, packs_per_gpu, cpu_parallel
        self.pad_latents = pad_latents  # read by each pack's process from the config (aevb.packed.launch.run_pack)
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from aevb.cli import fail
        from aevb.errors import ConfigError
        from aevb.packed.launch import job_configs, plan_packs
        from aevb.placement import launch_units, visible_gpus

        prog = Path(sys.argv[0]).name
        try:
            for name in ("max_pack", "packs_per_gpu", "cpu_parallel"):
                value = getattr(self, name)
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ConfigError(f"hydra.launcher.{name} must be a positive integer, got {value!r}")
            if self.pad_latents not in ("auto", True, False):
                raise ConfigError(f"hydra.launcher.pad_latents must be auto, true or false, got {self.pad_latents!r}")
            gpus = visible_gpus(self.gpus)
        except ConfigError as exc:
            fail(prog, str(exc))
        units, alone = plan_packs(job_configs(self, job_overrides, initial_job_idx), self.max_pack)
        for pos, reason in alone.items():
            log.info(f"packed: job #{initial_job_idx + pos} trains alone, not together with other jobs ({reason})")
        slots, per_slot = (gpus, self.packs_per_gpu) if gpus else ([None], self.cpu_parallel)
        return launch_units(self, job_overrides, initial_job_idx, units, slots, per_slot, "packed")
