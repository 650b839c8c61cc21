"""Divergence watch: a non-finite ELBO stops the run, named by step and term, without a host sync per step.

Each training step folds "is any term non-finite" into two device tensors (the first
bad step and which term); the host reads them only at the points where a NaN could
escape the run: every ``check_every`` steps, before validation, before a curve point,
before any checkpoint and before the final evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from aevb.errors import AevbError

TERM_NAMES = {1: "the reconstruction term log p(x|z) is", 2: "the KL term is", 3: "the reconstruction and KL terms are"}
ADVICE = ("lower the step size (model.optimizer.lr), or for conv/U-Net backbones use model/optimizer=adam"
          " model.init_std=null (see experiment=backbones_mnist)")


class DivergedError(AevbError):
    """Training produced a non-finite ELBO."""


class DivergenceWatch:
    def __init__(self) -> None:
        self.first_bad_step: Tensor | None = None  # -1 while every step was finite
        self.bad_terms: Tensor | None = None       # bit 1: reconstruction, bit 2: KL

    def update(self, step: int, recon: Tensor, kl: Tensor) -> None:
        """Fold one training step's per-datapoint terms in, on their device (no host sync)."""
        if self.first_bad_step is None or self.first_bad_step.device != recon.device:
            self.first_bad_step = torch.full((), -1, dtype=torch.long, device=recon.device)
            self.bad_terms = torch.zeros((), dtype=torch.long, device=recon.device)
        terms = (~torch.isfinite(recon.detach())).any().long() + 2 * (~torch.isfinite(kl.detach())).any().long()
        new = (self.first_bad_step < 0) & (terms > 0)
        self.first_bad_step = torch.where(new, torch.full_like(self.first_bad_step, step), self.first_bad_step)
        self.bad_terms = torch.where(new, terms, self.bad_terms)

    def state(self, reduce=None) -> tuple[int, int]:
        """(first bad step or -1, term bits); ``reduce`` (a max over DDP ranks) makes every rank agree."""
        if self.first_bad_step is None:
            return -1, 0
        packed = torch.stack([self.first_bad_step, self.bad_terms])
        if reduce is not None:
            packed = reduce(packed)
        step, terms = (int(v) for v in packed.tolist())
        return step, terms

    def check(self, where: str, reduce=None) -> None:
        """Raise DivergedError if any step so far was non-finite (one host sync)."""
        step, terms = self.state(reduce)
        if step >= 0:
            raise DivergedError(f"training diverged by step {step}: {TERM_NAMES.get(terms, 'the ELBO is')} not finite"
                                f" (found {where}); the last good checkpoint, if any, is checkpoints/last.ckpt; {ADVICE}")
