"""Adagrad with the authors' warm-up: the first steps only accumulate squared gradients.

The authors' later code (anglepy, 2014) ran Adagrad's accumulator for a number
of minibatches before the first parameter update, with a small ``reg`` under
the square root: w += lr * g / sqrt(sum g^2 + reg). Without it Adagrad's first
update moves every weight by exactly +-lr (g / |g|), which is what saturates the
encoder on Frey Face (REPRODUCTION.md, "why wake-sleep needs an informative encoder").

``Adagrad`` here *is* ``torch.optim.Adagrad`` once the warm-up is over (it
calls its ``step``), so the update maths and state (``sum``, ``step``) are
torch's; ``warmup_reg`` is the accumulator's starting value (torch's
``initial_accumulator_value``), the authors' ``reg``. With ``warmup_steps=0``
and ``warmup_reg=0`` it is torch's Adagrad, step for step.
"""

from __future__ import annotations

import torch

from aevb.errors import require


class Adagrad(torch.optim.Adagrad):
    """``torch.optim.Adagrad`` + ``warmup_steps`` accumulate-only steps; the count is per param group, checkpointed."""

    def __init__(self, params, lr: float = 1e-2, warmup_steps: int = 0, warmup_reg: float = 0.0, **kwargs):
        require(isinstance(warmup_steps, int) and warmup_steps >= 0,
                f"model.optimizer.warmup_steps must be an integer >= 0, got {warmup_steps}")
        require(warmup_reg >= 0, f"model.optimizer.warmup_reg must be >= 0, got {warmup_reg}")
        require("initial_accumulator_value" not in kwargs, "set the accumulator's start with warmup_reg")
        super().__init__(params, lr=lr, initial_accumulator_value=float(warmup_reg), **kwargs)
        for group in self.param_groups:
            group["warmup_steps"], group["warmup_done"] = warmup_steps, 0

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        warming = [g for g in self.param_groups if g["warmup_done"] < g["warmup_steps"]]
        for group in warming:  # accumulate g^2 (after weight decay, as torch's update would), do not move
            for p in group["params"]:
                if p.grad is None:
                    continue
                require(not p.grad.is_sparse, "Adagrad warm-up does not support sparse gradients")
                grad = p.grad if group["weight_decay"] == 0 else p.grad.add(p, alpha=group["weight_decay"])
                grad = -grad if group["maximize"] else grad
                self.state[p]["sum"].addcmul_(grad, grad, value=1)
            group["warmup_done"] += 1
        if len(warming) < len(self.param_groups):  # torch's step over the groups past their warm-up only
            saved, skip = self.param_groups, {id(g) for g in warming}
            self.param_groups = [g for g in saved if id(g) not in skip]
            try:
                super().step()
            finally:
                self.param_groups = saved
        return loss
