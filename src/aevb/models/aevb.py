"""AEVB (Algorithm 1): stochastic gradient ascent on the SGVB estimate of the ELBO."""

from __future__ import annotations

from torch import Tensor

from aevb.elbo import ElboTerms
from aevb.models.base import VAEModuleBase


class AEVB(VAEModuleBase):
    """The loss is exactly -(recon - beta * KL) per datapoint, averaged over the minibatch,
    plus the weight-prior term; beta = 1 (the default) makes it -ELBO, the paper's objective.
    """

    def __init__(self, *args, beta: float = 1.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = float(beta)

    def training_loss(self, terms: ElboTerms, params=None) -> Tensor:
        """``params``: the parameters the weight prior is taken over (default: the module's own;
        a packed sweep passes one member's, see aevb.packed)."""
        return -terms.objective(self.beta).mean() + self.weight_prior_term(params)

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor | None:
        if self.fast_loop is not None:  # the fast path (aevb.fast): x is a Chunk of steps, run there
            return self.fast_loop.training_step(x)
        terms = self.elbo_terms(x)
        loss = self.training_loss(terms)
        self.record("train", terms)
        self.count_samples(x.shape[0])
        return loss
