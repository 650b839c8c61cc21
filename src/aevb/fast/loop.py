"""The fast path inside Lightning: one ``training_step`` runs a Chunk of optimiser steps.

Lightning's per-batch work (hooks, loggers, progress, metric bookkeeping) is paid once
per chunk, not once per step. Everything the standard loop does between steps still
happens at the same step, because chunks end exactly there (:mod:`aevb.fast.plan`):
Lightning's step counter is advanced by the chunk's length, ``samples_seen`` by its
datapoints, validation is decided in steps (:meth:`FastLoop.should_validate`), and the
running train metrics and the divergence check are fed from device-side sums once per
chunk.
"""

from __future__ import annotations

from torch import Tensor

from aevb.data.batches import BatchPlan
from aevb.fast.plan import Chunk, ResidentBatches, StopPoints, epoch_batches
from aevb.fast.self_check import CHECK_STEPS, self_check
from aevb.fast.step import GraphedStep, Step, WakeSleepStep
from aevb.models.base import TERMS, metric_name


class FastLoop:
    def __init__(self, model, dm, steps_per_call: int = 100, compile: str | bool = "auto",
                 cuda_graph: bool = True, val_check_interval=1.0, val_global: bool = False, self_check: bool = True):
        self.model, self.dm = model, dm
        self.steps_per_call = int(steps_per_call)
        self.compile, self.cuda_graph = compile, bool(cuda_graph)
        self.self_check, self.check_pending = bool(self_check), False
        self.val_check_interval, self.val_global = val_check_interval, val_global
        self.step: Step | GraphedStep | None = None
        self.data: Tensor | None = None
        self.batches: Tensor | None = None
        self.last_chunk: Chunk | None = None
        self.trace: list[Tensor] | None = None  # per-step losses (tests); forces eager steps
        self.notes: list[str] = []

    # -- data ------------------------------------------------------------------------------
    @property
    def trainer(self):
        return self.model.trainer

    def train_batches(self) -> ResidentBatches:
        return ResidentBatches(self)

    def plan(self) -> BatchPlan:
        return self.dm.batch_plan(self.trainer.world_size)

    def steps_per_epoch(self) -> int:
        return self.plan().steps_per_epoch

    def val_every(self) -> int | None:
        """Steps between validations, or None for once per epoch (at its end)."""
        v = self.val_check_interval
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if v is None or float(v) >= 1.0:
            return None
        return max(1, int(self.steps_per_epoch() * float(v)))

    def stops(self) -> StopPoints:
        from lightning.pytorch.callbacks import ModelCheckpoint

        from aevb.callbacks import ElboCurve

        trainer, model = self.trainer, self.model
        plan = self.plan()
        callbacks = trainer.callbacks
        return StopPoints(
            plan=plan, steps_per_call=self.steps_per_call,
            max_steps=trainer.max_steps, val_every=self.val_every(), val_global=self.val_global,
            ckpt_every=tuple(c._every_n_train_steps for c in callbacks
                             if isinstance(c, ModelCheckpoint) and (c._every_n_train_steps or 0) > 0),
            curves=tuple(c for c in callbacks if isinstance(c, ElboCurve)),
            samples_at_zero=model.samples_seen - plan.samples(trainer.global_step))

    def start_epoch(self, epoch: int) -> None:
        """Put the training images on the device (once) and this epoch's batch indices beside them."""
        device = self.model.device
        if self.data is None or self.data.device != device:
            self.data = self.dm.splits["train"].to(device)
        trainer = self.trainer
        self.batches = epoch_batches(len(self.data), self.dm.batch_size, self.dm.seed, epoch,
                                     trainer.world_size, trainer.global_rank, self.dm.drop_last).to(device)

    # -- training --------------------------------------------------------------------------
    def training_step(self, chunk: Chunk) -> None:
        from aevb.packed.coordinator import active_pack

        pack = active_pack()  # inside a packed sweep the chunk runs together with the other members' (aevb.packed)
        n = pack.run_chunk(self, chunk) if pack is not None else self.run_steps(chunk)
        self.last_chunk = chunk = chunk._replace(stop=chunk.start + n)
        base = self.base_step
        base.count()
        epoch_loop = self.trainer.fit_loop.epoch_loop
        epoch_loop.manual_optimization.optim_step_progress.increment_by(n)  # global_step: one per optimiser step
        epoch_loop._batches_that_stepped += n - 1  # the loggers' step: Lightning adds the last one after the batch
        plan = self.plan()
        self.model.samples_seen += plan.samples(chunk.stop) - plan.samples(chunk.start)  # all ranks together
        # this rank's datapoints, which its running sums are over
        # (only an epoch's last step can be smaller, so only the chunk's last step is asked)
        mine = (n - 1) * self.dm.batch_size + plan.rank_batch_len(chunk.stop - 1, self.trainer.global_rank)
        self._fold_metrics(base.sums, mine)

    def ensure_step(self, rows: Tensor | None = None) -> None:
        """Build the step (once); with ``rows`` (the next batches' indices), check a compiled or graphed step
        against the eager one first (aevb.fast.self_check; fast.self_check=false skips it)."""
        if self.step is None:
            self.step = self._make_step()
            base = self.base_step
            self.check_pending = self.self_check and base.world == 1 and (base.compiled or self.step is not base)
        if self.check_pending and rows is not None and len(rows) > 0:
            base = self.base_step
            if self.step is not base and base.adagrad is None:
                return  # not graphed yet (the optimiser's warm-up): check the graph once it is
            self.check_pending = False
            what = " and ".join(w for w, on in (("compiled", base.compiled), ("graphed", self.step is not base)) if on)
            eager = base.eager_twin()
            if not self_check(self.step, eager, rows[:CHECK_STEPS], what):
                self.step = eager

    @property
    def base_step(self) -> Step:
        return self.step.step if isinstance(self.step, GraphedStep) else self.step

    def partial(self, chunk: Chunk) -> bool:
        """The chunk is the epoch's last step with a smaller batch on this rank (data.drop_last=false)."""
        return self.plan().rank_batch_len(chunk.start, self.trainer.global_rank) < self.dm.batch_size

    def run_steps(self, chunk: Chunk) -> int:
        """The chunk's optimiser steps, here; returns how many ran (fewer after a stop signal)."""
        if self.partial(chunk):  # the epoch's last, smaller batch: a chunk of one step (StopPoints)
            size = self.plan().rank_batch_len(chunk.start, self.trainer.global_rank)
            self.ensure_step()
            base = self.base_step  # eager (or compiled once more for its shape), never a CUDA graph's replay
            base(self.batches[chunk.start][:size])
            return 1
        self.ensure_step(self.batches[chunk.start:chunk.stop])
        n = 0
        for rows in self.batches[chunk.start:chunk.stop]:
            self.step(rows)
            n += 1
            if self.trainer.received_sigterm:  # a stop signal (aevb.run_control): end at this step, not the chunk's
                break
        return n

    def _fold_metrics(self, sums: Tensor, n: int) -> None:
        """Feed the chunk's mean terms to the same meters the standard loop's ``record`` feeds; no host sync.
        ``sums``: the terms summed over the chunk's datapoints on this rank, ``n`` of them."""
        model = self.model
        # not finite if any step's term was not: the divergence check (named by the chunk's last step)
        model.divergence.update(model.global_step, sums[1], sums[2])
        weight = sums.new_full((), float(n))  # a device tensor made on the device: no host-to-device copy
        for i, name in enumerate(TERMS):
            meter = model.meters[f"train_{name}"]
            meter.update(sums[i] / n, weight=weight)
            model.log(metric_name("train", name), meter, on_step=False, on_epoch=True, batch_size=n)
        if len(sums) > len(TERMS):  # wake-sleep: its two phase objectives (wake = the reconstruction term)
            model.record_phases(sums[1] / n, sums[3] / n, n)
        sums.zero_()

    def _make_step(self):
        model, trainer = self.model, self.trainer
        optimizers = model.optimizers()
        optimizers = [getattr(o, "optimizer", o) for o in (optimizers if isinstance(optimizers, list) else [optimizers])]
        device = model.device
        compile = self.compile == "true" or self.compile is True or (self.compile == "auto" and device.type == "cuda")
        binarize = self.dm.binarize == "dynamic"
        if hasattr(model, "wake_terms"):  # wake-sleep: two phases, two optimisers (decoder, encoder)
            step = WakeSleepStep(model, self.data, optimizers, binarize=binarize, compile=compile,
                                 world=trainer.world_size)
        else:
            step = Step(model, self.data, optimizers[0], binarize=binarize, compile=compile, world=trainer.world_size)
        step.trace = self.trace
        if trainer.world_size > 1:  # the step all-reduces its gradient itself; DDP's reducer would wait for one backward
            ddp = getattr(trainer.strategy, "model", None)
            if hasattr(ddp, "require_backward_grad_sync"):
                ddp.require_backward_grad_sync = False
        if device.type == "cuda" and self.cuda_graph:
            if step.capturable:
                return GraphedStep(step)
            self._note("no CUDA graph (it needs Adagrad without decay, one device and no trace); eager steps")
        return step

    def _note(self, text: str) -> None:
        self.notes.append(text)
        print(f"fast path: {text}", flush=True)

    # -- validation, in steps ------------------------------------------------------------------
    def should_validate(self, epoch_loop) -> bool:
        """Lightning's ``_should_check_val_fx`` for chunks: validate after the same steps as the standard loop."""
        trainer = self.trainer
        if not epoch_loop._should_check_val_epoch():
            return False
        if trainer.should_stop and trainer.fit_loop._can_stop_early:
            return True
        chunk = self.last_chunk
        if chunk is None:  # before the first chunk of a (resumed) run
            return False
        every = self.val_every()
        if every is None:
            return chunk.stop == self.steps_per_epoch()
        return (trainer.global_step if self.val_global else chunk.stop) % every == 0
