"""What every VAE-style LightningModule here shares: networks, metrics, counters, optimiser, weight prior.

Subclasses differ only in how they *train* (AEVB: gradient of the ELBO;
wake-sleep: two phases). Evaluation is identical for all of them, so their
numbers are on the same bound: the ELBO of ``aevb.elbo``, per datapoint, in nats.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from aevb.elbo import ESTIMATORS, ElboTerms, elbo
from aevb.errors import AevbError, require
from aevb.nets.base import Decoder, Encoder, init_normal_

TERMS = ("elbo", "recon", "kl")
FINITE_CHECK_EVERY = 100  # training steps between checks that the ELBO is still finite
# metric sets -> the prefix they log under; "train_eval" is the final pass over a fixed training subset
SPLITS = {"train": "train", "val": "val", "test": "test", "train_eval": "train"}


class VAEModuleBase(L.LightningModule):
    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        optimizer: Callable[..., torch.optim.Optimizer],
        latent_dim: int,
        n_train: int,
        n_samples: int = 1,
        estimator: str = "analytic",
        weight_prior: bool = True,
        init_std: float | None = 0.01,
    ):
        super().__init__()
        require(isinstance(latent_dim, int) and latent_dim > 0, f"model.latent_dim must be a positive integer, got {latent_dim}")
        require(encoder.latent_dim == latent_dim == decoder.latent_dim, "encoder, decoder and model.latent_dim disagree")
        require(isinstance(n_samples, int) and n_samples >= 1, f"model.n_samples (L) must be >= 1, got {n_samples}")
        require(estimator in ESTIMATORS, f"model.estimator must be one of {', '.join(ESTIMATORS)}, got '{estimator}'")
        require(n_train > 0, "the training set is empty")
        require(init_std is None or init_std > 0, f"model.init_std must be > 0 or null, got {init_std}")
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer"])
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = decoder.likelihood
        self.optimizer_factory = optimizer
        self.latent_dim, self.n_train = latent_dim, n_train
        self.n_samples, self.estimator, self.weight_prior = n_samples, estimator, weight_prior
        if init_std is not None:
            init_normal_(self, init_std)
        # keyed "<split>_<term>": ModuleDict keys may not shadow Module methods such as .train
        self.meters = nn.ModuleDict({f"{s}_{t}": MeanMetric() for s in SPLITS for t in TERMS})
        self.samples_seen = 0  # training datapoints evaluated, all ranks together (Figure 2's x-axis)
        self.eval_split = "test"  # which meters test_step feeds; see aevb.train.final_evaluation
        self._last_train_elbo: Tensor | None = None
        self._next_finite_check = FINITE_CHECK_EVERY
        self.fast_loop = None  # set by aevb.fast.enable_fast_path: training_step then runs chunks of steps

    # -- the objective ---------------------------------------------------------------------
    def elbo_terms(self, x: Tensor) -> ElboTerms:
        return elbo(x, self.encoder, self.decoder, self.likelihood, self.n_samples, self.estimator)

    def weight_prior_term(self, params=None) -> Tensor:
        """-log N(theta; 0, I) / N_train, up to a constant: the MAP prior on the parameters, per datapoint.

        ``params`` restricts it to a subset (wake-sleep gives each phase its own network's share).
        """
        if not self.weight_prior:
            return torch.zeros((), device=self.device)
        params = self.parameters() if params is None else params
        return 0.5 * sum(p.pow(2).sum() for p in params) / self.n_train

    def record(self, split: str, terms: ElboTerms) -> None:
        """Accumulate per-datapoint terms; Lightning computes (and syncs, under DDP) at epoch end."""
        if split == "train":
            self._last_train_elbo = terms.elbo.detach()
        for name in TERMS:
            meter = self.meters[f"{split}_{name}"]
            meter.update(getattr(terms, name).detach())
            self.log(f"{SPLITS[split]}/{name}", meter, on_step=False, on_epoch=True, batch_size=len(terms.elbo))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # One host sync every FINITE_CHECK_EVERY steps, not per step: stop a diverged run with a
        # clear message instead of training on and writing NaN into summary.json.
        # (>=, not ==: a training_step of the fast path may run several steps past the multiple)
        if self.global_step >= self._next_finite_check and self._last_train_elbo is not None:
            self._next_finite_check = (self.global_step // FINITE_CHECK_EVERY + 1) * FINITE_CHECK_EVERY
            bad = (~torch.isfinite(self._last_train_elbo)).any().float()
            if self._trainer is not None and self.trainer.world_size > 1:
                bad = self.trainer.strategy.reduce(bad, reduce_op="sum")  # every rank stops, or none
            if bool(bad > 0):
                raise AevbError(
                    f"training diverged by step {self.global_step} ({self.samples_seen:,} samples): the ELBO is not"
                    " finite; lower the step size (model.optimizer.lr), or for conv/U-Net backbones use"
                    " model/optimizer=adam model.init_std=null (see experiment=backbones_mnist)"
                )

    def count_samples(self, batch_size: int) -> None:
        self.samples_seen += batch_size * (self.trainer.world_size if self._trainer is not None else 1)

    # -- evaluation, identical for every training method ---------------------------------------
    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self.record("val", self.elbo_terms(x))

    def on_validation_epoch_end(self) -> None:
        self.log("samples_seen", float(self.samples_seen))

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self.record(self.eval_split, self.elbo_terms(x))

    # -- generation ------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, z: Tensor | None = None) -> Tensor:
        """Mean images E[x|z] for z ~ N(0, I) (or the given z)."""
        if z is None:
            z = torch.randn((n, *self.encoder.latent_shape), device=self.device)
        return self.likelihood.mean(self.decoder(z))

    # -- optimisation and state ------------------------------------------------------------
    def configure_optimizers(self):
        return self.optimizer_factory(self.parameters())

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["samples_seen"] = self.samples_seen
        if getattr(self, "run_config", None) is not None:
            checkpoint["aevb_config"] = self.run_config  # lets aevb-eval and the figures rebuild the model

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
