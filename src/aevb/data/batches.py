"""How one epoch of the training set is cut into optimiser steps, as a function of its sizes alone.

Both training loops, the budget (``max_samples``), the curve grids and the per-epoch callbacks count
samples through this one plan, so ``samples_seen`` and the steps per epoch are exact whether the last
partial batch is dropped (``data.drop_last=true``, the default: every step is M datapoints) or kept.

Batches are dealt to W ranks as Lightning's distributed wrapper deals them: step s of an epoch on rank
r takes batch ``(s * W + r) mod n_batches`` (the last round is padded from the start of the epoch). Only
the last step of an epoch can hold the partial batch, so every other step is ``W * M`` datapoints.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchPlan:
    n: int                  # training images
    batch_size: int         # M
    world: int = 1          # ranks
    drop_last: bool = True  # drop the last n mod M images of every epoch's order

    @property
    def n_batches(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_batches / self.world)

    def batch_len(self, k: int) -> int:
        """Datapoints in batch ``k`` of an epoch's order."""
        return min(self.batch_size, self.n - k * self.batch_size)

    def rank_batch_len(self, step: int, rank: int = 0) -> int:
        """Datapoints rank ``rank`` trains on at step ``step`` of an epoch."""
        return self.batch_len((step * self.world + rank) % self.n_batches)

    def step_samples(self, step: int) -> int:
        """Datapoints of step ``step`` of an epoch, all ranks together."""
        return sum(self.rank_batch_len(step, r) for r in range(self.world))

    @property
    def full_step(self) -> int:
        return self.batch_size * self.world

    @property
    def partial_last_step(self) -> bool:
        """True when the epoch's last step is smaller than the others (drop_last=false, M not dividing n)."""
        return self.step_samples(self.steps_per_epoch - 1) != self.full_step

    @property
    def samples_per_epoch(self) -> int:
        return (self.steps_per_epoch - 1) * self.full_step + self.step_samples(self.steps_per_epoch - 1)

    def samples(self, steps: int) -> int:
        """Datapoints in the first ``steps`` optimiser steps of a run."""
        epochs, within = divmod(steps, self.steps_per_epoch)
        return epochs * self.samples_per_epoch + within * self.full_step

    def first_step_reaching(self, samples: int) -> int:
        """The fewest steps after which ``samples(steps) >= samples``."""
        if samples <= 0:
            return 0
        epochs, rest = divmod(samples, self.samples_per_epoch)
        if rest == 0:
            return epochs * self.steps_per_epoch
        return epochs * self.steps_per_epoch + min(math.ceil(rest / self.full_step), self.steps_per_epoch)

    def describe(self) -> str:
        """The step size for the console ("steps of 100"), and an epoch's last where it differs."""
        text = f"steps of {self.full_step}"
        if self.partial_last_step:
            text += (f", each epoch's last of {self.step_samples(self.steps_per_epoch - 1)}"
                     f" ({self.steps_per_epoch:,} per epoch, data.drop_last=false)")
        return text
