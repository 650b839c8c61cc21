"""A LightningDataModule over image tensors held in memory.

Both data sets are small (MNIST is 188 MB as float32), so each split is one
tensor and a batch is one fancy-indexing op: no per-item Python work, and the
same tensors can later live on the accelerator. Subclasses only load pixels
and say how to split them.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler, SequentialSampler

from aevb.data.batches import BatchPlan
from aevb.errors import require, require_positive_int
from aevb.seeds import derived_seed

BINARIZE = ("none", "static", "dynamic")


def seeded_split(x: Tensor, n_test: int, n_val: int, seed: int) -> dict[str, Tensor]:
    """{"train", "val", "test"} from one seeded permutation of ``x``'s rows, each kept in ``x``'s order, so a
    split is a function of (data, sizes, seed) alone and a resumed run sees the same one."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    test, val, train = order.split([n_test, n_val, len(x) - n_test - n_val])
    return {"train": x[train.sort().values], "val": x[val.sort().values], "test": x[test.sort().values]}


class TensorBatches(Dataset):
    """Dataset whose __getitem__ takes a list of indices and returns the whole batch."""

    def __init__(self, x: Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, idx) -> Tensor:
        return self.x[idx]


class EpochShuffle(Sampler):
    """A random order that is a function of (seed, epoch) alone.

    Every DDP rank draws the same order (Lightning then deals its batches out), and a run
    resumed at epoch e sees the order the uninterrupted run would have seen; nothing that
    consumes the global RNG (an evaluation on rank zero, say) can change it.
    """

    def __init__(self, n: int, seed: int, epoch, skip=lambda: 0):
        self.n, self.seed, self.epoch, self.skip = n, seed, epoch, skip

    def __len__(self) -> int:
        return self.n

    def order(self) -> Tensor:
        """This epoch's permutation of range(n) (the fast path indexes device-resident images with it)."""
        gen = torch.Generator().manual_seed(derived_seed(self.seed, int(self.epoch())))
        return torch.randperm(self.n, generator=gen)

    def __iter__(self):
        # a run resumed mid-epoch continues this epoch's order where the checkpoint left it
        return iter(self.order()[self.skip():].tolist())


class ImageDataModule(L.LightningDataModule):
    """Serves (B, C, H, W) float tensors with pixels in [0, 1] for train / val / test.

    ``binarize``: ``none`` keeps intensities (the paper), ``static`` samples
    x ~ Bernoulli(pixels) once with ``binarize_seed``, ``dynamic`` resamples the
    training images every batch and binarises val/test once (seeded), as is
    standard for log-likelihood comparisons.
    """

    name = "images"

    def __init__(
        self,
        data_dir: str = "data",
        mirror: str | None = None,
        batch_size: int = 100,
        eval_batch_size: int = 1000,
        binarize: str = "none",
        binarize_seed: int = 0,
        train_eval_size: int = 10000,
        seed: int = 0,
        drop_last: bool = True,
    ):
        super().__init__()
        require(binarize in BINARIZE, f"data.binarize must be one of {', '.join(BINARIZE)}, got '{binarize}'")
        require_positive_int("data.batch_size", batch_size)
        require_positive_int("data.eval_batch_size", eval_batch_size)
        require(isinstance(drop_last, bool), f"data.drop_last must be true or false, got {drop_last!r}")
        self.data_dir = data_dir
        self.mirror = mirror
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.binarize = binarize
        self.binarize_seed = binarize_seed
        self.train_eval_size = train_eval_size
        self.seed = seed  # of the training order (see EpochShuffle)
        self.drop_last = drop_last  # drop each epoch's last partial batch (aevb.data.batches)
        self._resume_position: dict | None = None  # where in its epoch a resumed run continues
        self.splits: dict[str, Tensor] = {}
        self.fast_loop = None  # set by aevb.fast.enable_fast_path

    # -- what subclasses provide ------------------------------------------------------------
    def load_splits(self) -> dict[str, Tensor]:
        """Return {"train", "val", "test"} float tensors (N, C, H, W) in [0, 1]."""
        raise NotImplementedError

    # -- Lightning hooks -------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        splits = self.load_splits()
        if self.binarize != "none":
            for name, x in splits.items():
                if name != "train" or self.binarize == "static":
                    # one generator per split: val/test are the same images under static and dynamic
                    gen = torch.Generator().manual_seed(derived_seed(self.binarize_seed, name))
                    splits[name] = torch.bernoulli(x, generator=gen)
        n_eval = min(self.train_eval_size, len(splits["train"]))
        pick = torch.randperm(len(splits["train"]), generator=torch.Generator().manual_seed(0))[:n_eval]
        train_eval = splits["train"][pick.sort().values]
        if self.binarize == "dynamic":  # scored like val/test: binarised once, seeded
            gen = torch.Generator().manual_seed(derived_seed(self.binarize_seed, "train_eval"))
            train_eval = torch.bernoulli(train_eval, generator=gen)
        splits["train_eval"] = train_eval
        self.splits = splits

    def on_after_batch_transfer(self, batch: Tensor, dataloader_idx: int) -> Tensor:
        # (the fast path's batches are Chunks of steps, not images: it resamples each step's images itself)
        if self.binarize == "dynamic" and isinstance(batch, Tensor) and self.trainer is not None and self.trainer.training:
            return torch.bernoulli(batch)
        return batch

    @property
    def mirror_used(self):
        """The mirror folder data is read from (config key, else $AEVB_DATA_MIRROR), or None."""
        from aevb.data.sources import mirror_root

        root = mirror_root(self.mirror)
        return root.resolve() if root is not None else None

    @property
    def data_shape(self) -> tuple[int, int, int]:
        self.setup()
        return tuple(self.splits["train"].shape[1:])  # type: ignore[return-value]

    @property
    def n_train(self) -> int:
        self.setup()
        return len(self.splits["train"])

    @property
    def has_val(self) -> bool:
        """False when data.val_size=0: every training image is trained on, nothing is validated."""
        return self.split_size("val") > 0

    def split_size(self, split: str) -> int:
        self.setup()
        return len(self.splits[split])

    def _loader(self, split: str, batch_size: int, shuffle: bool = False, drop_last: bool = False,
                distributed: bool = False) -> DataLoader:
        self.setup()
        ds = TensorBatches(self.splits[split])
        if shuffle:
            base = EpochShuffle(len(ds), self.seed, lambda: self.trainer.current_epoch if self.trainer else 0,
                                skip=self._take_resume_skip)
        else:
            base = SequentialSampler(ds)
        world = self.trainer.world_size if distributed and self.trainer is not None else 1
        if world > 1:  # every rank needs at least one batch
            batch_size = min(batch_size, math.ceil(len(ds) / world))
        batches = BatchSampler(base, batch_size, drop_last=drop_last)
        if world > 1:
            # Lightning's default wrapper pads by repeating batches, which would count some datapoints
            # twice in val/test means; this one deals each batch to exactly one rank.
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSamplerWrapper

            batches = UnrepeatedDistributedSamplerWrapper(
                batches, num_replicas=world, rank=self.trainer.global_rank, shuffle=False)
        # its own generator: creating an iterator draws a base seed, which must not move the global stream
        # that training noise comes from (else a resumed run, which creates one more iterator, would differ)
        return DataLoader(ds, sampler=batches, batch_size=None, generator=torch.Generator().manual_seed(self.seed))

    # -- exact resume: the position inside the epoch travels in the checkpoint --------------------
    def state_dict(self) -> dict:
        if self.trainer is None:
            return {}
        loop = self.trainer.fit_loop.epoch_loop
        return {"epoch": int(self.trainer.current_epoch), "batches_done": int(loop.batch_progress.current.completed)}

    def load_state_dict(self, state: dict) -> None:
        self._resume_position = dict(state) if state else None

    def _take_resume_skip(self) -> int:
        """Training indices to skip once: the batches of the resumed epoch done before the checkpoint.

        One process only: under DDP Lightning's sampler wrapper deals a fixed-length batch list to the
        ranks, so a DDP run resumed mid-epoch replays that epoch from its start (Lightning warns)."""
        pos, self._resume_position = self._resume_position, None
        if not pos or self.trainer is None or pos.get("epoch") != self.trainer.current_epoch:
            return 0
        return pos["batches_done"] * self.batch_size if self.trainer.world_size == 1 else 0

    def batch_plan(self, world: int | None = None) -> BatchPlan:
        """How an epoch is cut into steps on ``world`` ranks (default: the trainer's)."""
        require(
            self.batch_size <= self.n_train or not self.drop_last,
            f"data.batch_size ({self.batch_size}) is larger than the training set ({self.n_train});"
            " data.drop_last=false trains on it as one batch",
        )
        if world is None:
            world = self.trainer.world_size if self.trainer is not None else 1
        return BatchPlan(self.n_train, self.batch_size, world, self.drop_last)

    def train_dataloader(self) -> DataLoader:
        self.batch_plan()  # (refuses a batch larger than the data when drop_last is on)
        if self.fast_loop is not None:  # the fast path (aevb.fast): chunks of steps over device-resident images
            return self.fast_loop.train_batches()
        return self._loader("train", self.batch_size, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, distributed=True)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, distributed=True)

    def eval_dataloader(self, split: str, distributed: bool = False) -> DataLoader:
        """Loader over ``train_eval`` (fixed train subset), ``val`` or ``test``; whole split on this rank
        unless ``distributed`` (then each rank gets its own share of the batches)."""
        return self._loader(split, self.eval_batch_size, distributed=distributed)
