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

from aevb.elbo import elbo
from aevb.fast.adagrad import adagrad_state, supports


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
    """This member's next steps can run packed: plain Adagrad (warm-up over), one process, no per-step trace."""
    step = loop.base_step
    return step.world == 1 and step.trace is None and supports(step.optimizer) and len(step.optimizer.param_groups) == 1


class PackedSteps:
    """Runs the same steps of K members (their FastLoops) as one program; the members' own tensors
    stay the truth: ``run`` reads them in and writes them back."""

    def __init__(self, loops: list):
        self.loops = loops
        self.models = [loop.model for loop in loops]
        self.template = max(self.models, key=lambda m: m.latent_dim)  # its modules have the padded shapes
        self.names = [name for name, _ in self.template.named_parameters()]
        self.shapes = [p.shape for _, p in self.template.named_parameters()]
        device = self.template.device
        self.latent = [m.latent_dim for m in self.models]
        self.mask = torch.zeros(len(loops), self.template.latent_dim, device=device)
        for k, n in enumerate(self.latent):
            self.mask[k, :n] = 1.0
        groups = [adagrad_state(loop.base_step.optimizer)[0] for loop in loops]  # (params, sums, steps, lr, eps)
        self.lrs = [g[3] for g in groups]
        self.eps = groups[0][4]
        self.lr = torch.tensor(self.lrs, device=device)
        self.grad_fn = vmap(grad_and_value(self._loss, has_aux=True))

    # -- the member's objective, as a pure function of its (padded) parameters ---------------------
    def _loss(self, params: dict[str, Tensor], x: Tensor, eps: Tensor, mask: Tensor):
        t = self.template
        enc = {k[len("encoder."):]: v for k, v in params.items() if k.startswith("encoder.")}
        dec = {k[len("decoder."):]: v for k, v in params.items() if k.startswith("decoder.")}

        def encode(x):
            mean, logvar = functional_call(t.encoder, enc, (x,))
            return mean * mask, logvar * mask  # padded units: N(0, 1), and their noise is 0

        terms = elbo(x, encode, lambda z: functional_call(t.decoder, dec, (z,)), t.likelihood, t.n_samples,
                     t.estimator, eps=eps)
        loss = t.training_loss(terms, params.values())
        return loss, torch.stack([terms.elbo.sum(), terms.recon.sum(), terms.kl.sum()]).detach()

    # -- the members' state in and out ----------------------------------------------------------------
    def _stack(self, tensors_of) -> list[Tensor]:
        out = []
        for i, shape in enumerate(self.shapes):
            t = torch.zeros((len(self.models), *shape), device=self.mask.device)
            for k, m in enumerate(self.models):
                src = tensors_of(k)[i]
                t[(k, *(slice(0, n) for n in src.shape))] = src.detach()
            out.append(t)
        return out

    def _unstack(self, stacked: list[Tensor], tensors_of) -> None:
        with torch.no_grad():
            for i, t in enumerate(stacked):
                for k in range(len(self.models)):
                    dst = tensors_of(k)[i]
                    dst.copy_(t[(k, *(slice(0, n) for n in dst.shape))])

    def _params(self, k: int) -> list[Tensor]:
        return [p for _, p in self.models[k].named_parameters()]

    def _sums(self, k: int) -> list[Tensor]:
        opt = self.loops[k].base_step.optimizer
        return [opt.state[p]["sum"] for p in self._params(k)]

    # -- the steps -----------------------------------------------------------------------------------
    def run(self, rows: Tensor, data: Tensor, binarize: bool, generators: list[torch.Generator], stop_now) -> tuple[int, Tensor]:
        """Steps with batch indices ``rows`` (K, n, B); returns (steps run, per-member sums of the ELBO,
        reconstruction and KL terms over them, (K, 3)). ``stop_now()`` is asked after every step."""
        params, sums = self._stack(self._params), self._stack(self._sums)
        totals = torch.zeros(len(self.models), 3, device=data.device)
        t, L = self.template, self.template.n_samples
        lr = [self.lr.view(-1, *([1] * len(s))) for s in self.shapes]
        done = 0
        for step in range(rows.shape[1]):
            xs, noise = [], []
            for k, g in enumerate(generators):  # each member's draws, in its single run's order and shapes
                x = data.index_select(0, rows[k, step])
                if binarize:
                    x = torch.bernoulli(x, generator=g)
                xs.append(x)
                e = torch.randn((L, x.shape[0], self.latent[k]), generator=g, device=x.device, dtype=x.dtype)
                noise.append(torch.nn.functional.pad(e, (0, t.latent_dim - self.latent[k])))
            grads, (_, terms) = self.grad_fn(dict(zip(self.names, params)), torch.stack(xs), torch.stack(noise), self.mask)
            with torch.no_grad():
                for p, s, g, r in zip(params, sums, (grads[n] for n in self.names), lr):
                    s.addcmul_(g, g, value=1)  # Adagrad, as aevb.fast.adagrad: sum += g^2; p -= lr g / (sqrt(sum) + eps)
                    p.sub_(r * g / s.sqrt().add_(self.eps))  # (lr g) / std: addcdiv's order
                totals += terms
            done += 1
            if stop_now():
                break
        self._unstack(params, self._params)
        self._unstack(sums, self._sums)
        self.stacked_params, self.stacked_sums = params, sums  # padded, as the last step left them (tests)
        return done, totals
