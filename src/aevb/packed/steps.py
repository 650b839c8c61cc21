"""The optimiser steps of several runs as one vectorised program (``torch.func.vmap``).

Each member keeps its own parameters, Adagrad state, learning rate, batches and noise
stream; only the arithmetic is batched, so K runs cost about the kernels of one. Members
whose latent sizes differ share the program when their backbones say padding is exact
(``latent_padding_exact``): parameters are zero-padded to the largest member's shapes and
the padded latent units are masked to mean 0, log-variance 0 and noise 0, so z = 0 there.
Such a unit then adds nothing to the KL (0.5 (mu^2 + sigma^2 - 1 - log sigma^2) = 0) and
nothing to the decoder's input, and every padded weight gets gradient 0 (its input or its
output is masked) plus the weight prior's gradient, which is the weight itself, 0; Adagrad
moves a weight with zero gradient by 0. The padding stays exactly 0 and the member trains
as alone (tests/test_packed.py).

The noise is the member's own: each member draws its batch's binarisation and its
reparameterisation noise from a generator holding its run's random state, in the order and
shapes the single run's step draws them, so a packed member sees the numbers its single run
would see.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call, grad_and_value, vmap

from aevb.elbo import elbo, log_normal
from aevb.fast.adagrad import supports
from aevb.fast.self_check import CHECK_STEPS, pack_self_check
from aevb.likelihoods import LOG_2PI


def latent_padding_exact(model) -> bool:
    return bool(getattr(model.encoder, "latent_padding_exact", False) and
                getattr(model.decoder, "latent_padding_exact", False))


def can_share(a, b) -> bool:
    """Two members fit one program: same parameter names and ranks, shapes equal or (when padding
    is exact for both) differing only through the latent size."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    if pa.keys() != pb.keys() or any(pa[k].dim() != pb[k].dim() for k in pa):
        return False
    if a.latent_dim == b.latent_dim:
        return all(pa[k].shape == pb[k].shape for k in pa)
    return latent_padding_exact(a) and latent_padding_exact(b) and type(a.encoder) is type(b.encoder)


def packable(loop) -> bool:
    """This member's next steps can run packed: plain Adagrad (warm-up over), one process, no per-step trace,
    one step size for all its parameters."""
    step = loop.base_step
    if step.world != 1 or step.trace is not None:
        return False
    opts = [u.optimizer for u in step.updaters]
    return (all(supports(o) and len(o.param_groups) == 1 for o in opts)
            and len({(o.param_groups[0]["lr"], o.param_groups[0]["eps"]) for o in opts}) == 1)


class PackedSteps:
    """Runs the same steps of K members (their FastLoops) as one program; the members' own tensors
    stay the truth: ``run`` reads them in and writes them back. AEVB: one vmapped gradient of the
    training loss per step. Wake-sleep (``wake_terms``): the wake gradient into the decoders and their
    update, each member's dreams from its updated decoder, then the sleep gradient into the encoders.

    ``compile``: the updates (vmapped gradient and stacked Adagrad, the draws excluded: they stay eager,
    from each member's own generator) through ``torch.compile``, once for this pack (a Pack keeps its
    PackedSteps). ``graph`` (CUDA): each whole step, draws included, replayed as one CUDA graph
    (aevb.packed.graph). The stacked tensors are allocated once and refilled in place, as a graph needs.
    """

    def __init__(self, loops: list, compile: bool = False, graph: bool = False, self_check: bool = True):
        self.loops = loops
        self.models = [loop.model for loop in loops]
        self.template = max(self.models, key=lambda m: m.latent_dim)  # its modules have the padded shapes
        self.wake_sleep = hasattr(self.template, "wake_terms")
        self.names = [name for name, _ in self.template.named_parameters()]
        self.shapes = [p.shape for _, p in self.template.named_parameters()]
        device, self.dtype = self.template.device, next(self.template.parameters()).dtype
        self.latent = [m.latent_dim for m in self.models]
        self.mask = torch.zeros(len(loops), self.template.latent_dim, device=device, dtype=self.dtype)
        for k, n in enumerate(self.latent):
            self.mask[k, :n] = 1.0
        groups = [loop.base_step.updaters[0].optimizer.param_groups[0] for loop in loops]
        self.eps = float(groups[0]["eps"])
        self.lr = torch.tensor([float(g["lr"]) for g in groups], device=device, dtype=self.dtype)
        self.lr_of = {n: self.lr.view(-1, *([1] * len(s))) for n, s in zip(self.names, self.shapes)}
        if self.wake_sleep:
            self.wake_grad = vmap(grad_and_value(self._wake_loss, has_aux=True))
            self.sleep_grad = vmap(grad_and_value(self._sleep_loss, has_aux=True))
            self.decode = vmap(lambda dec, z: functional_call(self.template.decoder, dec, (z,)))
        else:
            self.grad_fn = vmap(grad_and_value(self._loss, has_aux=True))
        self.compiled = bool(compile)
        wrap = torch.compile if compile else (lambda fn: fn)
        self.update = wrap(self._update)  # AEVB's whole update; wake-sleep: the wake phase
        self.sleep_update = wrap(self._sleep_update)
        # the stacked parameters and Adagrad sums, (K, *padded shape) each: filled from the members by run()
        self.stacked_params = self._stack(self._params)
        self.stacked_sums = self._stack(self._sums)
        self.graph = None
        if graph:
            from aevb.packed.graph import PackGraph

            self.graph = PackGraph(self)
        self.check_pending = self_check and (self.compiled or self.graph is not None)
    # -- each member's objectives, as pure functions of its (padded) parameters ----------------------
    def _encode(self, enc: dict[str, Tensor], mask: Tensor, fixed: bool = False):
        def encode(x):
            mean, logvar = functional_call(self.template.encoder, enc, (x,))
            if fixed:  # wake: z ~ q(z|x) held fixed, no gradient into the encoder
                mean, logvar = mean.detach(), logvar.detach()
            return mean * mask, logvar * mask  # padded units: N(0, 1), and their noise is 0, so z = 0
        return encode

    def _terms(self, enc, dec, x, eps, mask, fixed=False):
        t = self.template
        return elbo(x, self._encode(enc, mask, fixed), lambda z: functional_call(t.decoder, dec, (z,)), t.likelihood,
                    t.n_samples, t.estimator, eps=eps)

    @staticmethod
    def _sums_of(terms) -> Tensor:
        return torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach()

    def _loss(self, params: dict[str, Tensor], x: Tensor, eps: Tensor, mask: Tensor):
        enc, dec = _split(params)
        terms = self._terms(enc, dec, x, eps, mask)
        return self.template.training_loss(terms, params.values()), self._sums_of(terms)

    def _wake_loss(self, dec: dict[str, Tensor], enc: dict[str, Tensor], x: Tensor, eps: Tensor, mask: Tensor):
        terms = self._terms(enc, dec, x, eps, mask, fixed=True)
        return self.template.wake_loss(terms, dec.values()), self._sums_of(terms)

    def _sleep_loss(self, enc: dict[str, Tensor], z: Tensor, x: Tensor, mask: Tensor):
        mean, logvar = self._encode(enc, mask)(x)
        logq = log_normal(z, mean, logvar, batch_dims=1)
        # a padded unit adds log N(0; 0, 1) = -log(2 pi) / 2 to log q, a constant (no gradient): not counted
        padded = (mask.numel() - mask.sum()) * 0.5 * LOG_2PI * x.shape[0]
        return self.template.sleep_loss(logq, enc.values()), (logq.sum() + padded).detach()

    # -- the members' state in and out ----------------------------------------------------------------
    def _stack(self, tensors_of) -> list[Tensor]:
        out = [torch.zeros((len(self.models), *shape), device=self.mask.device, dtype=self.dtype)
               for shape in self.shapes]
        self._fill(out, tensors_of)
        return out

    @torch.no_grad()
    def _fill(self, stacked: list[Tensor], tensors_of) -> None:
        """The members' tensors into the stacked ones, in place (padding stays 0)."""
        for i, t in enumerate(stacked):
            for k in range(len(self.models)):
                src = tensors_of(k)[i]
                t[(k, *(slice(0, n) for n in src.shape))] = src.detach()

    def _unstack(self, stacked: list[Tensor], tensors_of) -> None:
        with torch.no_grad():
            for i, t in enumerate(stacked):
                for k in range(len(self.models)):
                    dst = tensors_of(k)[i]
                    dst.copy_(t[(k, *(slice(0, n) for n in dst.shape))])

    def _params(self, k: int) -> list[Tensor]:
        return [p for _, p in self.models[k].named_parameters()]

    def _sums(self, k: int) -> list[Tensor]:
        state = {}
        for u in self.loops[k].base_step.updaters:  # each parameter's Adagrad sum, in its own optimiser
            state.update({p: u.optimizer.state[p]["sum"] for p in u.params})
        return [state[p] for p in self._params(k)]

    # -- the steps -----------------------------------------------------------------------------------
    def run(self, rows: Tensor, data: Tensor, binarize: bool, generators: list[torch.Generator], stop_now) -> tuple[int, Tensor]:
        """Steps with batch indices ``rows`` (K, n, B); returns (steps run, per-member running sums over
        them, (K, 3) or (K, 4): ELBO, reconstruction, KL (and wake-sleep's log q(z|x) of the dreams)).
        ``stop_now()`` is asked after every step."""
        self._fill(self.stacked_params, self._params)
        self._fill(self.stacked_sums, self._sums)
        if self.check_pending:  # the first time: this compiled or graphed pack step against the eager one
            self.check_pending = False
            eager = PackedSteps(self.loops)
            what = " and ".join(w for w, on in (("compiled", self.compiled), ("graphed", self.graph)) if on)
            if not pack_self_check(self, eager, rows[:, :CHECK_STEPS], data, binarize, generators, what):
                self.update, self.sleep_update, self.graph, self.compiled = self._update, self._sleep_update, None, False
        totals = torch.zeros(len(self.models), 4 if self.wake_sleep else 3, device=data.device, dtype=self.dtype)
        step_fn = self.graph or self.step
        done = 0
        for step in range(rows.shape[1]):
            totals += step_fn(rows[:, step], data, binarize, generators)
            done += 1
            if stop_now():
                break
        self._unstack(self.stacked_params, self._params)
        self._unstack(self.stacked_sums, self._sums)
        return done, totals

    def step(self, rows: Tensor, data: Tensor, binarize: bool, generators) -> Tensor:
        """One step of every member on the stacked tensors (in place); its terms, (K, 3) or (K, 4). The draws
        are eager, each member's from its own generator; the updates are ``update`` / ``sleep_update``."""
        x, eps = self._draw_batches(rows, data, binarize, generators)
        terms = self.update(self.stacked_params, self.stacked_sums, x, eps)
        if not self.wake_sleep:
            return terms
        dec = _split(dict(zip(self.names, self.stacked_params)))[1]
        z, xd = self._dreams(dec, x.shape[1], generators)
        logq = self.sleep_update(self.stacked_params, self.stacked_sums, z, xd)
        return torch.cat([terms, logq.unsqueeze(1)], dim=1)

    def _update(self, params: list[Tensor], sums: list[Tensor], x: Tensor, eps: Tensor) -> Tensor:
        """AEVB: the vmapped gradient of each member's loss and its Adagrad step. Wake-sleep: the wake phase's
        (decoders only). In place on ``params`` and ``sums``; returns the terms' sums (K, 3)."""
        params, sums = dict(zip(self.names, params)), dict(zip(self.names, sums))
        if self.wake_sleep:
            enc, dec = _split(params)
            grads, (_, terms) = self.wake_grad(dec, enc, x, eps, self.mask)
            _adagrad(params, sums, grads, self.lr_of, self.eps, "decoder.")
        else:
            grads, (_, terms) = self.grad_fn(params, x, eps, self.mask)
            _adagrad(params, sums, grads, self.lr_of, self.eps)
        return terms

    def _sleep_update(self, params: list[Tensor], sums: list[Tensor], z: Tensor, xd: Tensor) -> Tensor:
        """Wake-sleep's sleep phase on the dreams (encoders only); returns each member's summed log q (K,)."""
        params, sums = dict(zip(self.names, params)), dict(zip(self.names, sums))
        grads, (_, logq) = self.sleep_grad(_split(params)[0], z, xd, self.mask)
        _adagrad(params, sums, grads, self.lr_of, self.eps, "encoder.")
        return logq

    def _draw_batches(self, rows: Tensor, data: Tensor, binarize: bool, generators) -> tuple[Tensor, Tensor]:
        """Each member's batch and reparameterisation noise, drawn in its single run's order and shapes."""
        t, xs, noise = self.template, [], []
        for k, g in enumerate(generators):
            x = data.index_select(0, rows[k])
            if binarize:
                x = torch.bernoulli(x, generator=g)
            xs.append(x)
            e = torch.randn((t.n_samples, x.shape[0], self.latent[k]), generator=g, device=x.device, dtype=x.dtype)
            noise.append(torch.nn.functional.pad(e, (0, t.latent_dim - self.latent[k])))
        return torch.stack(xs), torch.stack(noise)

    @torch.no_grad()
    def _dreams(self, dec: dict[str, Tensor], n: int, generators) -> tuple[Tensor, Tensor]:
        """Each member's dreams: z ~ N(0, I) of its own size (padded with 0), x ~ p(x|z) from its decoder."""
        t = self.template
        z = torch.stack([torch.nn.functional.pad(
            torch.randn((n, self.latent[k]), generator=g, device=self.mask.device, dtype=self.dtype),
            (0, t.latent_dim - self.latent[k]))
            for k, g in enumerate(generators)])
        out = self.decode(dec, z)
        xd = torch.stack([t.likelihood.sample({key: v[k] for key, v in out.items()}, generator=g)
                          for k, g in enumerate(generators)])
        return z, xd


def _split(params: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in params.items() if k.startswith("decoder.")}
    return enc, dec


@torch.no_grad()
def _adagrad(params: dict, sums: dict, grads: dict, lr: dict, eps: float, prefix: str = "") -> None:
    """Adagrad on the stacked tensors ``grads`` names (under ``prefix``: wake-sleep updates one network per
    phase), as aevb.fast.adagrad: sum += g^2; p -= (lr g) / (sqrt(sum) + eps), in addcdiv's order."""
    for name, g in grads.items():
        name = prefix + name
        s = sums[name]
        s.addcmul_(g, g, value=1)
        params[name].sub_(lr[name] * g / s.sqrt().add_(eps))
