"""Adagrad as a handful of foreach kernels over the state of a ``torch.optim.Adagrad``.

``torch.optim.Adagrad`` cannot be captured in a CUDA graph (its step counter lives on
the host and its update is per-tensor Python). This update does the same arithmetic
(sum += g^2; p -= lr * g / (sqrt(sum) + eps)) in place on that optimiser's own ``sum``
tensors, so it can be captured, and checkpoints, resume and the standard loop share one
optimiser state. It covers the configurations where the two are the same maths:
no learning-rate decay, no weight decay, not maximising, dense gradients.
"""

from __future__ import annotations

import torch
from torch import Tensor


def supports(optimizer: torch.optim.Optimizer, now: bool = True) -> bool:
    """True when :func:`adagrad_step_` reproduces ``optimizer.step()`` exactly (``now=False``: once any
    accumulate-only warm-up of the optimiser, groups with ``warmup_steps`` / ``warmup_done``, is over)."""
    if not isinstance(optimizer, torch.optim.Adagrad):
        return False
    groups = optimizer.param_groups
    warmup = all("warmup_steps" in g for g in groups)  # aevb.optim.Adagrad: torch's step once warmed up
    if type(optimizer).step is not torch.optim.Adagrad.step and not warmup:
        return False
    if now and warmup and any(g["warmup_done"] < g["warmup_steps"] for g in groups):
        return False
    return all(g["lr_decay"] == 0 and g["weight_decay"] == 0 and not g.get("maximize", False)
               and not g.get("differentiable", False) and not g.get("fused", False) and not isinstance(g["lr"], Tensor)
               for g in groups)


def adagrad_state(optimizer: torch.optim.Adagrad) -> list[tuple[list[Tensor], list[Tensor], list[Tensor], float, float]]:
    """Per parameter group: (params, sums, steps, lr, eps), the tensors the update writes in place."""
    out = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.requires_grad]
        state = [optimizer.state[p] for p in params]
        out.append((params, [s["sum"] for s in state], [s["step"] for s in state], float(group["lr"]), float(group["eps"])))
    return out


@torch.no_grad()
def adagrad_step_(params: list[Tensor], grads: list[Tensor], sums: list[Tensor], lr: float, eps: float) -> None:
    """One Adagrad update in place; the same operations as torch.optim.Adagrad's single-tensor path."""
    torch._foreach_addcmul_(sums, grads, grads, value=1)
    std = torch._foreach_sqrt(sums)
    torch._foreach_add_(std, eps)
    torch._foreach_addcdiv_(params, grads, std, value=-lr)


def count_steps_(steps: list[Tensor], n: int) -> None:
    """Advance the per-parameter step counters (host tensors) by n, as n calls of optimizer.step() would."""
    torch._foreach_add_(steps, float(n))
