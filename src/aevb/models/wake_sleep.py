"""Wake-sleep (Hinton et al. 1995), the baseline of the paper's Figures 2 and 3.

Same encoder q(z|x), decoder p(x|z), optimiser and weight prior as AEVB; only
the training signal differs:

* wake: z ~ q(z|x) on a data batch, held fixed (no gradient into the encoder);
  the decoder ascends log p(x, z) = log p(x|z) + log N(z; 0, I), whose prior
  term has no decoder parameters, so effectively log p(x|z).
* sleep: z ~ N(0, I), x ~ p(x|z) ("dreams", as many as the data batch); the
  encoder ascends log q(z|x) on those pairs.

Neither phase follows the gradient of a single bound, which is why the paper
compares the two methods on the ELBO: evaluation is inherited unchanged from
VAEModuleBase, and the training ELBO is recorded exactly as AEVB records it.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from aevb.elbo import ElboTerms, elbo, log_normal
from aevb.models.base import VAEModuleBase

PHASE_METRICS = ("wake_loglik", "sleep_logq")


class WakeSleep(VAEModuleBase):
    """Two optimisers (decoder, encoder) built from the same ``optimizer`` partial; manual optimisation.

    Both phases are computed from the current parameters and back-propagated in
    one pass (their parameter sets are disjoint, so the gradients do not mix);
    one backward per step is also what DDP without ``find_unused_parameters``
    needs. Only the decoder's optimiser steps through Lightning's counter, so
    ``trainer.global_step`` is one per batch, as for AEVB, and ``max_steps``
    (hence ``max_samples``) means the same for both methods.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.automatic_optimization = False
        self.phase_meters = nn.ModuleDict({name: MeanMetric() for name in PHASE_METRICS})

    # -- the two phases -------------------------------------------------------------------
    def _encode_fixed(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, logvar = self.encoder(x)
        return mean.detach(), logvar.detach()

    def wake_terms(self, x: Tensor) -> ElboTerms:
        """The ELBO terms of ``x`` (the same estimator as ``elbo_terms``) with the encoder cut from the graph.

        Their values are the training ELBO; ``recon`` = 1/L sum_l log p(x|z_l), z_l ~ q(z|x),
        carries gradient to the decoder only: it is the wake objective, per datapoint.
        """
        return elbo(x, self._encode_fixed, self.decoder, self.likelihood, self.n_samples, self.estimator)

    @torch.no_grad()
    def dream(self, n: int) -> tuple[Tensor, Tensor]:
        """n pairs z ~ N(0, I), x ~ p(x|z) from the current decoder (binary images for a Bernoulli decoder)."""
        z = torch.randn((n, *self.encoder.latent_shape), device=self.device)
        return z, self.likelihood.sample(self.decoder(z))

    def sleep_logq(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z|x) per dreamed pair, shape (n,), nats: the sleep objective."""
        mean, logvar = self.encoder(x)
        return log_normal(z, mean, logvar, batch_dims=1)

    def wake_loss(self, terms: ElboTerms) -> Tensor:
        return -terms.recon.mean() + self.weight_prior_term(self.decoder.parameters())

    def sleep_loss(self, logq: Tensor) -> Tensor:
        return -logq.mean() + self.weight_prior_term(self.encoder.parameters())

    # -- training ---------------------------------------------------------------------------
    def training_step(self, x: Tensor, batch_idx: int) -> None:
        opt_dec, opt_enc = self.optimizers()
        terms = self.wake_terms(x)
        logq = self.sleep_logq(*self.dream(x.shape[0]))
        opt_dec.zero_grad()
        opt_enc.zero_grad()
        self.manual_backward(self.wake_loss(terms) + self.sleep_loss(logq))
        opt_dec.step()  # counts the global step
        self.trainer.strategy.optimizer_step(opt_enc.optimizer, closure=_no_closure)  # same step, not counted again

        self.record("train", terms)  # detached inside: the same training ELBO AEVB records
        for name, value in (("wake_loglik", terms.recon), ("sleep_logq", logq)):
            meter = self.phase_meters[name]
            meter.update(value.detach())
            self.log(f"train/{name}", meter, on_step=False, on_epoch=True, batch_size=x.shape[0])
        self.count_samples(x.shape[0])

    def configure_optimizers(self):
        return [self.optimizer_factory(self.decoder.parameters()), self.optimizer_factory(self.encoder.parameters())]


def _no_closure() -> None:
    return None
