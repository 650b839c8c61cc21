"""One optimiser step on device-resident images, with nothing that waits for the device.

The step gathers its batch by index, resamples it under dynamic binarisation, computes
the model's own ``training_loss`` and its gradient, all-reduces the gradient across DDP
ranks, applies the optimiser, and adds the batch's ELBO terms to running sums on the
device. Nothing in it reads a value back to the host, so the host can queue steps ahead
of the device; on CUDA the whole of it is replayed as one CUDA graph (:class:`GraphedStep`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from aevb.fast.adagrad import adagrad_state, adagrad_step_, count_steps_, supports
from aevb.fast.functional import program_for, tensors


class Updater:
    """One optimiser's update from given gradients: the foreach Adagrad (capturable) where it reproduces
    ``optimizer.step()`` exactly, else ``optimizer.step()`` itself (any other optimiser, Adagrad's warm-up)."""

    def __init__(self, params: list[Tensor], optimizer: torch.optim.Optimizer):
        self.params, self.optimizer = params, optimizer
        self.adagrad = adagrad_state(optimizer) if supports(optimizer) else None
        self.later_adagrad = self.adagrad is None and supports(optimizer, now=False)  # after the optimiser's warm-up
        self.uncounted = 0  # foreach updates not yet added to the optimiser's step counters (host ints)

    def __call__(self, grads) -> None:
        if self.adagrad is None:
            for p, g in zip(self.params, grads):
                p.grad = g
            self.optimizer.step()
            if self.later_adagrad and supports(self.optimizer):
                self.adagrad, self.later_adagrad = adagrad_state(self.optimizer), False
            return
        grads = dict(zip(self.params, grads))
        for params, sums, _, lr, eps in self.adagrad:
            adagrad_step_(params, [grads[p] for p in params], sums, lr, eps)
        self.uncounted += 1

    def count(self) -> None:
        """Advance Adagrad's host step counters by the foreach steps since the last call, as optimizer.step() would."""
        if self.uncounted:
            for _, _, steps, _, _ in self.adagrad:
                count_steps_(steps, self.uncounted)
            self.uncounted = 0


class Step:
    """AEVB's step: the model's ``training_loss`` and its gradient, one optimiser."""

    N_SUMS = 3  # running sums of the ELBO, reconstruction and KL terms

    def __init__(self, model, data: Tensor, optimizer, binarize: bool, compile: bool = False, world: int = 1):
        self.model, self.data = model, data
        self.binarize, self.world = binarize, world
        self.updaters = self._updaters(model, optimizer)
        # the objective as a function of the networks' tensors, compiled once per architecture (aevb.fast.functional)
        self.program = program_for(model, compile)
        self.enc, self.dec = tensors(model.encoder), tensors(model.decoder)
        # running sums of the ELBO, reconstruction and KL terms (and a method's own) since the last fold (nats)
        self.sums = torch.zeros(self.N_SUMS, device=data.device, dtype=self.enc[0].dtype)  # the model's precision
        self.trace: list[Tensor] | None = None  # per-step losses, when a test asks for them

    def _updaters(self, model, optimizer) -> list[Updater]:
        return [Updater([p for p in model.parameters() if p.requires_grad], optimizer)]

    def _optimizers(self):
        return self.updaters[0].optimizer

    def eager_twin(self) -> "Step":
        """The same step of the same model, optimiser(s) and data, uncompiled (aevb.fast.self_check)."""
        twin = type(self)(self.model, self.data, self._optimizers(), self.binarize, compile=False, world=self.world)
        twin.trace = self.trace
        return twin

    @property
    def adagrad(self):
        """Every optimiser's foreach Adagrad state, or None while any one still needs its own step()."""
        states = [u.adagrad for u in self.updaters]
        return None if any(s is None for s in states) else states

    @property
    def uncounted(self) -> int:
        return self.updaters[0].uncounted

    @uncounted.setter
    def uncounted(self, n: int) -> None:  # every optimiser steps once per step
        for u in self.updaters:
            u.uncounted = n

    def count(self) -> None:
        for u in self.updaters:
            u.count()

    @property
    def compiled(self) -> bool:
        return self.program.compiled

    def batch(self, rows: Tensor) -> Tensor:
        x = self.data.index_select(0, rows)
        return torch.bernoulli(x) if self.binarize else x

    def __call__(self, rows: Tensor) -> Tensor:
        x = self.batch(rows)  # the draws first, eagerly, in the standard loop's order: binarisation, then eps
        loss, sums = self.program.aevb_loss(self.enc, self.dec, x, self.program.noise(x.shape[0], self.enc[0]))
        self._apply(self.updaters[0], loss)
        self.sums.add_(sums)
        if self.trace is not None:
            self.trace.append(loss.detach())
        return loss

    def _apply(self, updater: Updater, loss: Tensor) -> None:
        grads = torch.autograd.grad(loss, updater.params)
        if self.world > 1:
            grads = _all_reduce_mean(grads, self.world)
        updater(grads)

    @property
    def capturable(self) -> bool:
        """The step can be one CUDA graph (now, or once the optimiser's warm-up is over)."""
        return (all(u.adagrad is not None or u.later_adagrad for u in self.updaters) and self.world == 1
                and self.trace is None)


class WakeSleepStep(Step):
    """Wake-sleep's step, as ``WakeSleep.training_step`` takes it: the wake phase's gradient into the decoder
    and its update, then dreams from the updated decoder, the sleep phase's gradient into the encoder and its
    update (two optimisers, decoder first). The same random draws in the same order as the standard loop."""

    N_SUMS = 4  # ELBO, reconstruction (= the wake objective), KL, and the sleep objective log q(z|x)

    def _updaters(self, model, optimizers) -> list[Updater]:
        dec, enc = optimizers
        return [Updater([p for p in model.decoder.parameters() if p.requires_grad], dec),
                Updater([p for p in model.encoder.parameters() if p.requires_grad], enc)]

    def _optimizers(self):
        return [u.optimizer for u in self.updaters]

    def __call__(self, rows: Tensor) -> Tensor:
        p, like = self.program, self.enc[0]
        x = self.batch(rows)
        wake, terms = p.wake_loss(self.enc, self.dec, x, p.noise(x.shape[0], like))
        self._apply(self.updaters[0], wake)
        z = p.dream_latents(x.shape[0], like)  # dreams from the decoder this step just updated
        sleep, logq = p.sleep_loss(self.enc, z, p.likelihood.sample(p.decode(self.dec, z)))
        self._apply(self.updaters[1], sleep)
        self.sums.add_(torch.cat([terms, logq.view(1)]))
        if self.trace is not None:
            self.trace.append(wake.detach())
        return wake


def _all_reduce_mean(grads, world: int) -> list[Tensor]:
    """The gradient averaged over the ranks, as DDP's reducer would leave it (one flat all-reduce)."""
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]


class GraphedStep:
    """The whole step (gather, noise, forward, backward, update, sums) as one CUDA graph.

    The first ``warmup`` steps run eagerly on a side stream (they are real training steps;
    they also trigger any compilation), the next one is captured and every later one is a
    replay with the new batch indices copied into the graph's input. ``cuda``: the torch.cuda
    namespace (a test passes a stand-in to drive the capture's failure path on a CPU).
    """

    def __init__(self, step: Step, warmup: int = 3, cuda=torch.cuda):
        self.step, self.warmup, self.done, self.failed = step, warmup, 0, False
        self.cuda = cuda
        self.graph = None
        self.rows: Tensor | None = None

    def __call__(self, rows: Tensor) -> None:
        cuda = self.cuda
        if self.done < self.warmup or self.step.adagrad is None:  # (still in the optimiser's warm-up)
            side = cuda.Stream()
            side.wait_stream(cuda.current_stream())
            with cuda.stream(side):
                self.step(rows)
            cuda.current_stream().wait_stream(side)
            self.done += 1
            return
        if self.failed:
            self.step(rows)
            return
        if self.graph is None:
            if not self._capture(rows):
                self.step(rows)
                return
        else:
            self.rows.copy_(rows)
        self.graph.replay()
        self.step.uncounted += 1  # the update ran on the device; its Python (the count) did not

    def _capture(self, rows: Tensor) -> bool:
        """Record one step; False after a failed capture, with one line naming the cause."""
        uncounted = self.step.uncounted
        self.rows = rows.clone()
        graph, error = capture(lambda: self.step(self.rows), self.cuda)
        self.step.uncounted = uncounted  # capture records the step without running it: replay runs it
        if error is None:
            self.graph = graph
            return True
        self.failed = True
        say_capture_failed("fast path", error)
        return False


def capture(record, cuda=torch.cuda, generators=()):
    """``record()`` captured into a new CUDA graph on a side stream: (graph, None), or (None, the error).

    Not ``with torch.cuda.graph(...)``: when the work fails inside it, its ``__exit__`` calls
    ``capture_end()``, which raises again (the capture is invalidated) before the stream context is
    left, so the process would go on with the capture stream as its current stream. Here capture ends
    inside the stream context whatever happened, the context is always left, and after a failure the
    device is synchronised before anything else runs. ``generators``: the non-default CUDA generators
    the work draws from, registered with the graph so that every replay advances them (PyTorch issue 91950).
    """
    graph, side, error = cuda.CUDAGraph(), cuda.Stream(), None
    side.wait_stream(cuda.current_stream())
    with cuda.stream(side):
        try:
            for g in generators:
                graph.register_generator_state(g)
            graph.capture_begin()
        except Exception as exc:
            error = exc
        else:
            try:
                record()
            except Exception as exc:  # capture records without running: nothing was trained by the failed try
                error = exc
            try:
                graph.capture_end()
            except Exception as exc:
                error = error or exc
    cuda.current_stream().wait_stream(side)
    if error is None:
        return graph, None
    cuda.synchronize()
    return None, error


def say_capture_failed(who: str, error: BaseException) -> None:
    print(f"{who}: CUDA graph capture failed ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]});"
          " eager steps from here", flush=True)
