"""Helpers the 2-process DDP tests run inside their worker processes (importable there: tests/ is on their path)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class DdpProbe(L.Callback):
    """Writes each rank's final parameters, counters and first training batch to <out_dir>/rank<r>.pt."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.first_batch: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if self.first_batch is None:  # the fast path's "batch" is a Chunk: its first step's images
            loop = getattr(module, "fast_loop", None)
            self.first_batch = (batch.detach().clone() if torch.is_tensor(batch)
                                else loop.data[loop.batches[batch.start]].clone())

    def on_train_end(self, trainer, module):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save({"params": {n: p.detach().clone() for n, p in module.named_parameters()},
                    "first_batch": self.first_batch, "global_step": trainer.global_step,
                    "samples_seen": module.samples_seen}, self.out_dir / f"rank{trainer.global_rank}.pt")


def average_gradients_worker(rank: int, world_size: int, store: str, out: str) -> None:
    """One gloo rank: gradients (rank + 1) * arange through aevb's average_gradients with Lightning's DDP reduce."""
    import torch.distributed as dist
    from lightning.fabric.utilities.distributed import _sync_ddp_if_available

    from aevb.models.wake_sleep import average_gradients

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(2))]
    for p in params[:2]:
        p.grad = (rank + 1) * torch.arange(p.numel(), dtype=torch.float32).view_as(p)
    average_gradients(params, lambda t, reduce_op: _sync_ddp_if_available(t, None, reduce_op=reduce_op))
    torch.save([p.grad for p in params], f"{out}.rank{rank}")
    dist.destroy_process_group()
