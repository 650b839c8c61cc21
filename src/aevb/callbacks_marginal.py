"""Figure 3's curves: importance-sampled log p(x) at log-spaced numbers of training samples evaluated.

The paper's Figure 3 compares AEVB and wake-sleep on the *marginal* likelihood,
not on the bound each method does (or does not) optimise. Here log p(x) is
estimated with the importance-weighted bound, the encoder as proposal (Burda et
al. 2016; :mod:`aevb.marginal_likelihood`): a lower bound in expectation that
tightens with k and is never below the ELBO in expectation (k = 1 is the ELBO).
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor

from aevb.callbacks import ElboCurve
from aevb.errors import require, require_positive_int
from aevb.evaluation import UNITS, eval_mode
from aevb.marginal_likelihood import evaluate_log_likelihood
from aevb.seeds import derived_seed

SUBSET_SEED = 0  # which images are evaluated; fixed, whatever the proposal seed


class MarginalLikelihoodCurve(ElboCurve):
    """Estimated log p(x) on fixed train and test subsets at ElboCurve's log-spaced grid of samples_seen.

    Grid points are ``start * 10**(i / points_per_decade)`` (the same grid as
    :class:`~aevb.callbacks.ElboCurve`); when ``samples_seen`` first reaches one, and
    once more at the end of training, log p(x) is estimated with ``k`` importance
    samples per datapoint on ``n_datapoints`` training images and as many test
    images (fewer if a split is smaller), and a row is appended to
    ``<run dir>/marginal_curve.csv`` (nats per datapoint) and sent to the loggers as
    ``marginal/train_log_px`` and ``marginal/test_log_px``.

    The images are a fixed, seeded subset of each split (the whole split when it
    has at most ``n_datapoints`` images); the proposal noise is drawn from a
    generator seeded with ``seed`` at every evaluation, so successive points and
    different runs are scored on the same noise. Evaluation is in eval mode, without
    gradient, on rank zero only (no collective: other DDP ranks wait at their next
    step), and leaves the module in the mode it found it.

    ``k = 100`` keeps a curve of ~18 points cheap; final numbers to report use the
    standard k = 5000 (``aevb.marginal_likelihood.evaluate_log_likelihood``).
    """

    HEADER = "samples_seen,train_log_px,test_log_px,k,train_n,test_n\n"
    SPLITS = ("train", "test")

    def __init__(
        self,
        k: int = 100,
        n_datapoints: int = 1000,
        points_per_decade: int = 4,
        start: int = 10_000,
        chunk_size: int = 100,
        batch_size: int = 100,
        seed: int = 0,
        filename: str = "marginal_curve.csv",
        verbose: bool = True,
    ):
        for name, value in (("k", k), ("n_datapoints", n_datapoints), ("points_per_decade", points_per_decade),
                            ("start", start), ("chunk_size", chunk_size), ("batch_size", batch_size)):
            require_positive_int(f"callbacks.marginal_curve.{name}", value)
        require(isinstance(seed, int) and not isinstance(seed, bool),
                f"callbacks.marginal_curve.seed must be an integer, got {seed}")
        super().__init__(points_per_decade=points_per_decade, start=start, filename=filename)
        self.k, self.n_datapoints, self.chunk_size = k, n_datapoints, chunk_size
        self.batch_size, self.seed, self.verbose = batch_size, seed, verbose
        self._subsets: dict[str, Tensor] | None = None

    # -- the images ---------------------------------------------------------------------------
    def subsets(self, dm) -> dict[str, Tensor]:
        """{"train", "test"}: the fixed images evaluated at every point (CPU tensors, chosen once per run)."""
        if self._subsets is None:
            require(dm is not None, "MarginalLikelihoodCurve needs a datamodule: trainer.fit(model, datamodule=...)")
            dm.setup()
            out = {}
            for split in self.SPLITS:
                x = dm.splits[split]
                gen = torch.Generator().manual_seed(derived_seed(SUBSET_SEED, split))
                if self.n_datapoints < len(x):
                    pick = torch.randperm(len(x), generator=gen)[: self.n_datapoints].sort().values
                    x = x[pick]
                if split == "train" and getattr(dm, "binarize", "none") == "dynamic":
                    # training batches are binarised afresh each step; score a fixed binarisation, like val/test
                    x = torch.bernoulli(x, generator=gen)
                out[split] = x
            self._subsets = out
        return self._subsets

    # -- one point of the curve ----------------------------------------------------------------
    def estimate(self, pl_module: L.LightningModule, x: Tensor) -> tuple[float, int]:
        """Mean estimated log p(x) over ``x`` (nats per datapoint) and the number of datapoints."""
        return evaluate_log_likelihood(pl_module, x.split(self.batch_size), k=self.k, chunk_size=self.chunk_size,
                                       device=pl_module.device, seed=self.seed)

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        subsets = self.subsets(trainer.datamodule)
        with eval_mode(pl_module), torch.no_grad():
            train, n_train = self.estimate(pl_module, subsets["train"])
            test, n_test = self.estimate(pl_module, subsets["test"])
        seen = self.append_row(trainer, pl_module, (train, test, self.k, n_train, n_test),
                               {"marginal/train_log_px": train, "marginal/test_log_px": test})
        if self.verbose:
            print(f"log p(x) after {seen:>12,} training samples | train {train:9.2f} ({n_train:,} images)"
                  f" | test {test:9.2f} ({n_test:,} images) | {UNITS}, importance sampled, k = {self.k}", flush=True)
