"""Where the fast path's runs of optimiser steps end, and the device-resident batches they draw.

One Lightning "batch" of the fast path is a :class:`Chunk`: consecutive training steps of
one epoch. A chunk never steps over a point where something must happen between steps:
a curve point (the grid of every :class:`~aevb.callbacks.ElboCurve`, reached at the same
``samples_seen`` as in the standard loop), a validation, a step-interval checkpoint, the
budget (``max_steps``) or the end of the epoch; and it is at most ``steps_per_call`` long.
An epoch's smaller last step (``data.drop_last=false``) is a chunk of its own.
Every stop is a function of the global step alone, so a resumed run cuts the same chunks.

The order of the images is :class:`~aevb.data.base.EpochShuffle`'s, a function of (seed,
epoch); step s of an epoch on rank r of W uses batch ``(s * W + r) mod n_batches`` of that
order, which is how Lightning's distributed wrapper deals the standard loop's batches. Both
paths therefore see the same batches, and a run resumed at global step g continues the
order the uninterrupted run would have used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from aevb.data.base import EpochShuffle
from aevb.data.batches import BatchPlan


class Chunk(NamedTuple):
    """Steps ``start .. stop-1`` of ``epoch`` (counted within the epoch), run in one training_step."""

    epoch: int
    start: int
    stop: int


@dataclass
class StopPoints:
    """The steps a chunk must end at; all counts are optimiser steps (one per batch, as in the standard loop)."""

    plan: BatchPlan               # how an epoch is cut into steps (its length, the datapoints of each)
    steps_per_call: int
    max_steps: int = -1           # the budget; -1: none
    val_every: int | None = None  # validate after every val_every steps ...
    val_global: bool = False      # ... counted over the whole run (check_val_every_n_epoch=None), else within the epoch
    ckpt_every: tuple[int, ...] = ()  # ModelCheckpoint(every_n_train_steps=...)
    curves: tuple = ()            # ElboCurve callbacks
    samples_at_zero: int = 0      # samples_seen at global step 0 (samples_seen - plan.samples(global_step))

    @property
    def steps_per_epoch(self) -> int:
        return self.plan.steps_per_epoch

    def next_stop(self, step: int, epoch_start: int) -> int:
        """The first global step after ``step`` at which the chunk starting at ``step`` must end."""
        last = epoch_start + self.steps_per_epoch
        ends = [last, step + self.steps_per_call]
        if self.plan.partial_last_step and step < last - 1:
            ends.append(last - 1)  # the epoch's smaller last step is a chunk of its own (FastLoop.run_steps)
        if self.max_steps >= 0 and self.max_steps > step:
            ends.append(self.max_steps)
        if self.val_every:
            base = 0 if self.val_global else epoch_start
            ends.append(base + ((step - base) // self.val_every + 1) * self.val_every)
        ends += [(step // n + 1) * n for n in self.ckpt_every]
        seen = self.samples_at_zero + self.plan.samples(step)
        for curve in self.curves:  # the step at which samples_seen first reaches the callback's next point
            point = curve.next_point(seen)
            ends.append(max(step + 1, self.plan.first_step_reaching(point - self.samples_at_zero)))
        return min(ends)

    def chunks(self, epoch: int, first_step: int) -> list[Chunk]:
        """The chunks of ``epoch`` from global step ``first_step`` (its start, or where a resumed run stands)."""
        epoch_start = epoch * self.steps_per_epoch
        step, out = max(first_step, epoch_start), []
        end = epoch_start + self.steps_per_epoch
        if self.max_steps >= 0:
            end = min(end, self.max_steps)
        while step < end:
            stop = min(self.next_stop(step, epoch_start), end)
            out.append(Chunk(epoch, step - epoch_start, stop - epoch_start))
            step = stop
        return out


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, world: int = 1, rank: int = 0,
                  drop_last: bool = True) -> Tensor:
    """(steps_per_epoch, batch_size) image indices this rank uses in ``epoch``, in step order.

    The same batches as ``BatchSampler(EpochShuffle(...), batch_size, drop_last)``, dealt as
    Lightning's DistributedSamplerWrapper deals them (rank r takes batches r, r + W, ..., the
    last round padded from the start of the epoch). With ``drop_last=False`` the partial batch's
    row is filled up with the epoch's first indices; only its first ``BatchPlan.batch_len`` are used.
    """
    order = EpochShuffle(n, seed, lambda: epoch).order()
    plan = BatchPlan(n, batch_size, world, drop_last)
    n_batches = plan.n_batches
    if n_batches * batch_size > n:  # (the padding is never trained on)
        order = order.repeat(math.ceil(n_batches * batch_size / n))
    table = order[: n_batches * batch_size].view(n_batches, batch_size)
    return table[(torch.arange(plan.steps_per_epoch) * world + rank) % n_batches]


class ResidentBatches:
    """The fast path's training "dataloader": yields Chunks; the images stay on the training device.

    One pass yields the chunks from the current global step to the end of its epoch of the data
    (or the budget). ``len()`` is the number of steps in an epoch, an upper bound on its chunks
    (Lightning reads it once; its epoch ends when the iterator is exhausted).
    """

    def __init__(self, loop):
        self.loop = loop

    def __len__(self) -> int:
        return self.loop.steps_per_epoch()

    # Resumable: the position in the epoch is the global step, which the checkpoint restores anyway.
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __iter__(self):
        # a generator: nothing runs until the first chunk is asked for (Lightning calls iter() once just to check)
        loop = self.loop
        step = loop.model.trainer.global_step
        per_epoch = loop.steps_per_epoch()
        # The position in the data is a function of the global step alone: a run resumed from any checkpoint
        # (Lightning counts a run stopped at its budget as a finished epoch) continues the uninterrupted order.
        # (the standard loop's DataLoader has its own generator, so neither path draws from the global
        # stream here: both consume the same random numbers, whether a run starts, resumes or not)
        epoch = step // per_epoch
        if loop.model.trainer.current_epoch < epoch:
            # resumed from a checkpoint of the epoch's last step, saved before Lightning counted that epoch as
            # finished: this pass is that epoch's end (no steps left in it), the next pass is the next epoch
            return
        loop.start_epoch(epoch)
        yield from loop.stops().chunks(epoch, step)
