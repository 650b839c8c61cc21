"""hydra/launcher=gpu_parallel: each job of a multirun in its own process, pinned to one GPU of this node.

Jobs go round-robin over the GPUs, at most ``runs_per_gpu`` per GPU at a time; the next job
takes the first GPU with a free slot. The work is in aevb.placement (imported only on launch,
since Hydra imports every plugin module at start-up).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class GpuParallelLauncher(Launcher):
    def __init__(self, gpus: Any = None, runs_per_gpu: int = 1) -> None:
        self.gpus = gpus  # null: every visible GPU (CUDA_VISIBLE_DEVICES, else torch.cuda.device_count())
        self.runs_per_gpu = runs_per_gpu
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def gpu_list(self) -> list[str]:
        """The GPUs to use; a configuration that cannot work ends the command with one error line."""
        from aevb.cli import fail
        from aevb.errors import ConfigError
        from aevb.placement import visible_gpus

        prog = Path(sys.argv[0]).name
        try:
            gpus = visible_gpus(self.gpus)
            if isinstance(self.runs_per_gpu, bool) or not isinstance(self.runs_per_gpu, int) or self.runs_per_gpu < 1:
                raise ConfigError(f"hydra.launcher.runs_per_gpu must be a positive integer, got {self.runs_per_gpu!r}")
            if not gpus:
                raise ConfigError("hydra/launcher=gpu_parallel found no GPU (CUDA_VISIBLE_DEVICES and"
                                  " torch.cuda.device_count() show none); on CPU use hydra/launcher=local_parallel,"
                                  " or name the GPUs with hydra.launcher.gpus=[0,1]")
        except ConfigError as exc:
            fail(prog, str(exc))
        return gpus

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from aevb.placement import launch_on_gpus

        return launch_on_gpus(self, job_overrides, initial_job_idx)
