"""Wake-sleep (Hinton et al. 1995), the baseline of the paper's Figures 2 and 3.

Same encoder q(z|x), decoder p(x|z), optimiser and weight prior as AEVB; only
the training signal differs:

* wake: z ~ q(z|x) on a data batch, held fixed (no gradient into the encoder);
  the decoder ascends log p(x, z) = log p(x|z) + log N(z; 0, I), whose prior
  term has no decoder parameters, so effectively log p(x|z).
* sleep: z ~ N(0, I), x ~ p(x|z) ("dreams", as many as the data batch); the
  encoder ascends log q(z|x) on those pairs.

The phases run in sequence, as the algorithm does (and the authors' code):
the sleep phase dreams from the decoder *after* this step's wake update.
Dreaming from the decoder before it (``phases="simultaneous"``, the
pre-issue-14 behaviour, kept only to reproduce old numbers) costs wake-sleep
some 45 nats on MNIST at N_z = 20 and 3 x 10^5 samples.

Neither phase follows the gradient of a single bound, which is why the paper
compares the two methods on the ELBO: evaluation is inherited unchanged from
VAEModuleBase, and the training ELBO is recorded exactly as AEVB records it.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from aevb.elbo import ElboTerms, elbo, log_normal
from aevb.errors import require
from aevb.models.base import RunningMean, VAEModuleBase

PHASE_METRICS = ("wake_loglik", "sleep_logq")
PHASES = ("sequential", "simultaneous")


class WakeSleep(VAEModuleBase):
    """Two optimisers (decoder, encoder) built from the same ``optimizer`` partial; manual optimisation.

    One training step per batch: wake backward + decoder step, then dreams from the
    updated decoder, sleep backward + encoder step. Only the decoder's optimiser
    steps through Lightning's counter, so ``trainer.global_step`` is one per batch,
    as for AEVB, and ``max_steps`` (hence ``max_samples``) and ``samples_seen`` mean
    the same for both methods.

    Under DDP: ``training_step`` runs inside the DDP wrapper's forward, whose reducer
    expects one backward over *all* parameters per forward; each phase's backward
    touches only its own network, so both run under the wrapper's ``no_sync()``
    (``strategy.block_backward_sync``) and each phase's gradients are averaged over
    the ranks explicitly (one all-reduce of the flattened gradients) before its
    optimiser step. Every rank therefore applies the same update and the
    parameters stay identical across ranks.

    ``phases="simultaneous"`` dreams from the decoder *before* the wake update
    (the old behaviour; off by default, not the algorithm).
    """

    def __init__(self, *args, phases: str = "sequential", **kwargs):
        require(phases in PHASES, f"model.phases must be one of {', '.join(PHASES)}, got '{phases}'")
        super().__init__(*args, **kwargs)
        self.phases = phases
        self.automatic_optimization = False
        self.phase_meters = nn.ModuleDict({name: RunningMean() for name in PHASE_METRICS})

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
        z = torch.randn((n, *self.encoder.latent_shape), device=self.device, dtype=self.dtype)
        return z, self.likelihood.sample(self.decoder(z))

    def sleep_logq(self, z: Tensor, x: Tensor) -> Tensor:
        """log q(z|x) per dreamed pair, shape (n,), nats: the sleep objective."""
        mean, logvar = self.encoder(x)
        return log_normal(z, mean, logvar, batch_dims=1)

    def wake_loss(self, terms: ElboTerms, params=None) -> Tensor:
        """``params``: the decoder's parameters the weight prior is taken over (default its own; aevb.packed)."""
        return -terms.recon.mean() + self.weight_prior_term(self.decoder.parameters() if params is None else params)

    def sleep_loss(self, logq: Tensor, params=None) -> Tensor:
        return -logq.mean() + self.weight_prior_term(self.encoder.parameters() if params is None else params)

    # -- training ---------------------------------------------------------------------------
    def training_step(self, x: Tensor, batch_idx: int) -> None:
        if self.fast_loop is not None:  # the fast path (aevb.fast.step.WakeSleepStep): x is a Chunk of steps
            return self.fast_loop.training_step(x)
        opt_dec, opt_enc = self.optimizers()
        step = self.global_step  # before opt_dec counts this one
        terms = self.wake_terms(x)
        dreams = self.dream(x.shape[0]) if self.phases == "simultaneous" else None
        self._phase_update(self.wake_loss(terms), self.decoder, opt_dec.step)  # opt_dec counts the global step
        if dreams is None:
            dreams = self.dream(x.shape[0])  # from the decoder this step just updated
        logq = self.sleep_logq(*dreams)
        self._phase_update(self.sleep_loss(logq), self.encoder,  # the same step, not counted again
                           lambda: self.trainer.strategy.optimizer_step(opt_enc.optimizer, closure=_no_closure))

        self.record("train", terms)  # detached inside: the same training ELBO AEVB records
        self.record_phases(terms.recon.detach(), logq.detach(), x.shape[0])
        self.count_samples(x.shape[0], step)

    def record_phases(self, wake_loglik: Tensor, sleep_logq: Tensor, n: int) -> None:
        """The phase objectives per datapoint (values, or a chunk's means over ``n`` datapoints), nats."""
        for name, value in (("wake_loglik", wake_loglik), ("sleep_logq", sleep_logq)):
            meter = self.phase_meters[name]
            meter.update(value, weight=value.new_full((), float(n if value.dim() == 0 else 1)))  # no host copy
            self.log(f"train/{name}", meter, on_step=False, on_epoch=True, batch_size=n)

    def _phase_update(self, loss: Tensor, net: nn.Module, step) -> None:
        """One phase: gradients of ``loss`` into ``net`` only, averaged over DDP ranks, then ``step()``."""
        params = list(net.parameters())
        for p in params:
            p.grad = None
        block = getattr(self.trainer.strategy, "block_backward_sync", nullcontext)
        with block():  # the DDP reducer stays out: it would wait for the other network's gradients
            self.manual_backward(loss)
        if self.trainer.world_size > 1:
            average_gradients(params, self.trainer.strategy.reduce)
        step()

    def configure_optimizers(self):
        return [self.optimizer_factory(self.decoder.parameters()), self.optimizer_factory(self.encoder.parameters())]


def average_gradients(params: list[nn.Parameter], reduce) -> None:
    """Replace each ``p.grad`` by its mean over the ranks: one ``reduce(flat, reduce_op="mean")`` call."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="mean")
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def _no_closure() -> None:
    return None
