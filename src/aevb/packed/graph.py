"""A pack's step (every member's draws, vmapped gradients, stacked Adagrad, terms) as one CUDA graph.

Each member draws from its own generator (its single run's stream), so that a packed member sees the
numbers its single run would see. A CUDA graph replays the random kernels it recorded with the offsets
of capture time unless the generator is registered with the graph; every member's generator is (PyTorch
issue 91950: ``CUDAGraph.register_generator_state``), so each replay advances each member's stream by
what its draws take, as eager steps would, and "a member equals its single run" holds under the graph.
The generators are the Pack's own objects for the pack's life (aevb.packed.coordinator): their state is
set from each member's at every chunk, and the graph follows, since it reads the state at replay.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aevb.fast.step import capture, say_capture_failed


class PackGraph:
    """``PackedSteps.step`` captured once and replayed; the first ``warmup`` steps run eagerly on a side stream
    (they are real steps and trigger any compilation). After a failed capture: one line, eager steps."""

    def __init__(self, steps, warmup: int = 3, cuda=torch.cuda):
        self.steps, self.warmup, self.done, self.failed, self.cuda = steps, warmup, 0, False, cuda
        self.graph = None
        self.rows: Tensor | None = None
        self.out: Tensor | None = None
        self.generators: list | None = None

    def __call__(self, rows: Tensor, data: Tensor, binarize: bool, generators) -> Tensor:
        cuda = self.cuda
        if self.done < self.warmup:
            side = cuda.Stream()
            side.wait_stream(cuda.current_stream())
            with cuda.stream(side):
                out = self.steps.step(rows, data, binarize, generators)
            cuda.current_stream().wait_stream(side)
            self.done += 1
            return out
        if self.failed or (self.generators is not None and self.generators != list(generators)):
            return self.steps.step(rows, data, binarize, generators)  # (other generator objects: not this graph's)
        if self.graph is None:
            self.rows, self.generators = rows.clone(), list(generators)

            def record():
                self.out = self.steps.step(self.rows, data, binarize, self.generators)

            self.graph, error = capture(record, cuda, generators=self.generators)
            if error is not None:
                self.failed = True
                say_capture_failed("packed sweep", error)
                return self.steps.step(rows, data, binarize, generators)
        else:
            self.rows.copy_(rows)
        self.graph.replay()
        return self.out.clone()
