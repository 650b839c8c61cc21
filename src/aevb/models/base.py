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
from torchmetrics import MeanMetric, SumMetric

from aevb.divergence import DivergenceWatch
from aevb.elbo import ESTIMATORS, ElboTerms, elbo, weight_penalty
from aevb.errors import AevbError, require
from aevb.evaluation import REPORTED_SPLITS
from aevb.nets.base import INITS, Decoder, Encoder, initialise_
from aevb.resume import capture_rng, restore_rng

TERMS = ("elbo", "recon", "kl")
FINITE_CHECK_EVERY = 100  # training steps between checks that the ELBO is still finite
# metric sets -> the prefix they log under; "train_eval" is the final pass over a fixed training subset
SPLITS = {"train": "train", **{split: prefix for prefix, split in REPORTED_SPLITS.items()}}


class RunningMean(MeanMetric):
    """torchmetrics' MeanMetric without its NaN check, for the training terms. That check (``isnan(x).any()`` in
    an ``if``) reads a value back from the device at every update; the divergence watch (aevb.divergence)
    already stops a run whose terms are not finite, and reads the device only where a NaN could escape."""

    def update(self, value: Tensor, weight: Tensor | None = None) -> None:
        value = value.to(self.mean_value.dtype)
        weight = torch.ones_like(value) if weight is None else torch.broadcast_to(weight.to(value.dtype), value.shape)
        self.mean_value += (value * weight).sum()
        self.weight += weight.sum()


def metric_name(split: str, term: str, final: bool = False) -> str:
    """The logged name: ``train/<term>_running`` is the running mean over the training batches of an epoch,
    ``val/<term>`` a validation during fit, ``final/<split>/<term>`` the final evaluation (aevb.train)."""
    if split == "train":
        return f"train/{term}_running"
    return f"{'final/' if final else ''}{SPLITS[split]}/{term}"


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
        init: str = "paper",
        run_config: dict | None = None,
    ):
        """``run_config``: the resolved run config, stored in every checkpoint so that aevb-eval and
        aevb-figures can rebuild the model from the checkpoint alone (see aevb.building)."""
        super().__init__()
        require(encoder.latent_dim == latent_dim == decoder.latent_dim, "encoder, decoder and model.latent_dim disagree")
        require(isinstance(n_samples, int) and n_samples >= 1, f"model.n_samples (L) must be >= 1, got {n_samples}")
        require(estimator in ESTIMATORS, f"model.estimator must be one of {', '.join(ESTIMATORS)}, got '{estimator}'")
        require(n_train > 0, "the training set is empty")
        require(init_std is None or init_std > 0, f"model.init_std must be > 0 or null, got {init_std}")
        require(init in INITS, f"model.init must be one of {', '.join(INITS)}, got '{init}'")
        require(init_std is not None or init == "paper",
                f"model.init_std=null keeps PyTorch's default init; model.init={init} needs a std for its normal draws")
        self.save_hyperparameters(ignore=["encoder", "decoder", "optimizer", "run_config"])
        self.encoder, self.decoder = encoder, decoder
        self.likelihood = decoder.likelihood
        self.optimizer_factory = optimizer
        self.latent_dim, self.n_train = latent_dim, n_train
        self.n_samples, self.estimator, self.weight_prior = n_samples, estimator, weight_prior
        if init_std is not None:  # null: PyTorch's own init (conv backbones, see experiment=backbones_mnist)
            initialise_(encoder, decoder, init, init_std)
        # keyed "<split>_<term>": ModuleDict keys may not shadow Module methods such as .train
        self.meters = nn.ModuleDict({f"{s}_{t}": RunningMean() if s == "train" else MeanMetric()
                                     for s in SPLITS for t in TERMS})
        for meter in self.meters.values():
            meter.persistent(True)  # a resumed run continues the epoch's running means
        self.counts = nn.ModuleDict({s: SumMetric() for s in SPLITS if s != "train"})  # datapoints really evaluated
        self.samples_seen = 0  # training datapoints evaluated, all ranks together (Figure 2's x-axis)
        self.eval_split = "test"  # which meters test_step feeds; set through select_eval_split(s)
        self.eval_splits = ("test",)  # the split of each test dataloader, in order
        self.run_config = run_config
        self.divergence = DivergenceWatch()
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
        return weight_penalty(self.parameters() if params is None else params, self.n_train)

    def record(self, split: str, terms: ElboTerms, final: bool = False) -> None:
        """Accumulate per-datapoint terms; Lightning computes (and syncs, under DDP) at epoch end."""
        if split == "train":
            self.divergence.update(self.global_step, terms.recon, terms.kl)
        for name in TERMS:
            meter = self.meters[f"{split}_{name}"]
            meter.update(getattr(terms, name).detach())
            self.log(metric_name(split, name, final), meter, on_step=False, on_epoch=True, batch_size=len(terms.elbo),
                     add_dataloader_idx=False)  # the names already say the split (one test pass scores three)
        if split in self.counts:
            self.counts[split].update(len(terms.elbo))
            self.log(metric_name(split, "n_datapoints", final), self.counts[split], on_step=False, on_epoch=True,
                     add_dataloader_idx=False)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        # one host sync every FINITE_CHECK_EVERY steps, not per step (the watch itself lives on the device);
        # >=, not ==: a training_step of the fast path may run several steps past the multiple
        if self.global_step >= self._next_finite_check:
            self._next_finite_check = (self.global_step // FINITE_CHECK_EVERY + 1) * FINITE_CHECK_EVERY
            self.check_finite(f"by step {self.global_step}")

    def check_finite(self, where: str) -> None:
        """Stop with a one-line error if any training step so far had a non-finite ELBO term.

        Called before everything that would carry a NaN out of the run: validation, curve points,
        checkpoints, the final evaluation. Under DDP every rank stops, or none.
        """
        reduce = None
        if self._trainer is not None and self.trainer.world_size > 1:
            reduce = lambda t: self.trainer.strategy.reduce(t.float(), reduce_op="max").long()  # noqa: E731
        self.divergence.check(where, reduce)

    def on_validation_start(self) -> None:
        if self._trainer is not None and self.trainer.state.fn == "fit":
            self.check_finite("before validation")

    def count_samples(self, batch_size: int, step: int | None = None) -> None:
        """Add one standard-loop step's datapoints, all ranks together: under DDP with data.drop_last=false the
        ranks' last batches of an epoch differ in size, so their sum comes from the data's batch plan.
        ``step``: the global step this one is (default: the steps done so far)."""
        world = self.trainer.world_size if self._trainer is not None else 1
        plan = getattr(self.trainer.datamodule, "batch_plan", None) if world > 1 else None
        if plan is None:
            self.samples_seen += batch_size * world
        else:
            plan = plan(world)
            step = self.global_step if step is None else step
            self.samples_seen += plan.step_samples(step % plan.steps_per_epoch)

    # -- evaluation, identical for every training method ---------------------------------------
    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self.record("val", self.elbo_terms(x))

    def on_validation_epoch_end(self) -> None:
        self.log("samples_seen", float(self.samples_seen))

    def select_eval_split(self, split: str) -> None:
        """Which data split the next ``trainer.test`` scores (its metrics log under SPLITS[split])."""
        self.select_eval_splits([split])

    def select_eval_splits(self, splits) -> None:
        """The splits of the next ``trainer.test``'s dataloaders, in order: one pass scores them all."""
        for split in splits:
            require(split in SPLITS and split != "train",
                    f"no evaluation split '{split}' (choose from: val, test, train_eval)")
        self.eval_splits = tuple(splits)
        self.eval_split = self.eval_splits[0]

    def test_step(self, x: Tensor, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.record(self.eval_splits[dataloader_idx], self.elbo_terms(x), final=True)

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
        self.check_finite("before writing a checkpoint")  # no checkpoint ever holds a diverged model
        checkpoint["samples_seen"] = self.samples_seen
        checkpoint["aevb_rng"] = capture_rng(self.device)  # exact resume: the noise streams continue
        if self.run_config is not None:
            checkpoint["aevb_config"] = self.run_config  # lets aevb-eval and the figures rebuild the model

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.samples_seen = int(checkpoint.get("samples_seen", 0))
        if "aevb_rng" in checkpoint and self._trainer is not None:  # resuming a fit, not loading for evaluation
            restore_rng(checkpoint["aevb_rng"], self.device)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, **kwargs):
        """``AEVB.load_from_checkpoint(path)`` on any checkpoint aevb-train writes: the networks are rebuilt from the
        config stored inside (aevb.checkpoints.load_model), so no other argument is needed. Eval mode."""
        from aevb.checkpoints import load_as

        if kwargs:
            raise AevbError(f"{cls.__name__}.load_from_checkpoint takes the checkpoint path and map_location only;"
                            f" the configuration comes from the checkpoint (got {', '.join(sorted(kwargs))})")
        return load_as(cls, checkpoint_path, map_location)
