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
        self.loss_fn = torch.compile(self._loss) if compile else self._loss
        # running sums of the ELBO, reconstruction and KL terms (and a method's own) since the last fold (nats)
        self.sums = torch.zeros(self.N_SUMS, device=data.device)
        self.trace: list[Tensor] | None = None  # per-step losses, when a test asks for them

    def _updaters(self, model, optimizer) -> list[Updater]:
        return [Updater([p for p in model.parameters() if p.requires_grad], optimizer)]

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

    def _loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        terms = self.model.elbo_terms(x)
        loss = self.model.training_loss(terms)
        return loss, torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach()

    def batch(self, rows: Tensor) -> Tensor:
        x = self.data.index_select(0, rows)
        return torch.bernoulli(x) if self.binarize else x

    def __call__(self, rows: Tensor) -> Tensor:
        loss, sums = self.loss_fn(self.batch(rows))
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
        u = self.updaters[0]
        return (u.adagrad is not None or u.later_adagrad) and self.world == 1 and self.trace is None


class WakeSleepStep(Step):
    """Wake-sleep's step, as ``WakeSleep.training_step`` takes it: the wake phase's gradient into the decoder
    and its update, then dreams from the updated decoder, the sleep phase's gradient into the encoder and its
    update (two optimisers, decoder first). The same random draws in the same order as the standard loop."""

    N_SUMS = 4  # ELBO, reconstruction (= the wake objective), KL, and the sleep objective log q(z|x)

    def _updaters(self, model, optimizers) -> list[Updater]:
        dec, enc = optimizers
        return [Updater([p for p in model.decoder.parameters() if p.requires_grad], dec),
                Updater([p for p in model.encoder.parameters() if p.requires_grad], enc)]

    def __call__(self, rows: Tensor) -> Tensor:
        model, x = self.model, self.batch(rows)
        terms = model.wake_terms(x)
        wake = model.wake_loss(terms)
        self._apply(self.updaters[0], wake)
        logq = model.sleep_logq(*model.dream(x.shape[0]))  # from the decoder this step just updated
        self._apply(self.updaters[1], model.sleep_loss(logq))
        self.sums.add_(torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum(), logq.sum()]).detach())
        if self.trace is not None:
            self.trace.append(wake.detach())
        return wake

    @property
    def capturable(self) -> bool:
        return False  # (eager: the dreams' sampling between the two updates is not captured)


def _all_reduce_mean(grads, world: int) -> list[Tensor]:
    """The gradient averaged over the ranks, as DDP's reducer would leave it (one flat all-reduce)."""
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat.div_(world)
    return [part.view_as(g) for part, g in zip(flat.split([g.numel() for g in grads]), grads)]


class GraphedStep:
    """The whole step (gather, forward, backward, update, sums) as one CUDA graph.

    The first ``warmup`` steps run eagerly on a side stream (they are real training steps;
    they also trigger any compilation), the next one is captured and every later one is a
    replay with the new batch indices copied into the graph's input.
    """

    def __init__(self, step: Step, warmup: int = 3):
        self.step, self.warmup, self.done, self.failed = step, warmup, 0, False
        self.graph: torch.cuda.CUDAGraph | None = None
        self.rows: Tensor | None = None

    def __call__(self, rows: Tensor) -> None:
        if self.done < self.warmup or self.step.adagrad is None:  # (still in the optimiser's warm-up)
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.step(rows)
            torch.cuda.current_stream().wait_stream(side)
            self.done += 1
            return
        if self.failed:
            self.step(rows)
            return
        if self.graph is None:
            self.rows = rows.clone()
            graph, uncounted = torch.cuda.CUDAGraph(), self.step.uncounted
            try:
                with torch.cuda.graph(graph):
                    self.step(self.rows)
            except Exception as exc:  # capture records without running: nothing was trained by the failed try
                self.failed, self.step.uncounted = True, uncounted
                print(f"fast path: CUDA graph capture failed ({type(exc).__name__}: {str(exc)[:200]}); eager steps",
                      flush=True)
                self.step(rows)
                return
            self.graph = graph  # capture records the step without running it: replay runs it
            self.step.uncounted = uncounted
        else:
            self.rows.copy_(rows)
        self.graph.replay()
        self.step.uncounted += 1  # the update ran on the device; its Python (the count) did not
