"""MNIST as in the authors' code: intensities in [0, 1], 50k train / 10k val / 10k test by default."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from aevb.data.base import ImageDataModule
from aevb.data.sources import RawFile, locate, move_into_place
from aevb.errors import DataError, require

# md5 of the *uncompressed* IDX files (see ../shared/data/README.md)
FILES = {
    "train_images": RawFile("mnist/train-images-idx3-ubyte.gz", "6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train_labels": RawFile("mnist/train-labels-idx1-ubyte.gz", "a25bea736e30d166cdddb491f175f624", 60_008),
    "test_images": RawFile("mnist/t10k-images-idx3-ubyte.gz", "2646ac647ad5339dbf082846283269ea", 7_840_016),
    "test_labels": RawFile("mnist/t10k-labels-idx1-ubyte.gz", "27ae3e4e09519cfbb04c329615203637", 10_008),
}
N_TRAIN_FILE, N_TEST_FILE = 60_000, 10_000


def torchvision_download(filename: str):
    """Download ``filename`` from torchvision's MNIST mirrors, checked against torchvision's .gz md5."""

    def fetch(dest: Path) -> None:
        from torchvision.datasets import MNIST
        from torchvision.datasets.utils import download_url

        md5 = dict(MNIST.resources)[filename]
        failure: Exception | None = None
        for base in MNIST.mirrors:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    download_url(base + filename, tmp, filename, md5)
                except Exception as exc:  # try the next mirror
                    failure = exc
                    continue
                move_into_place(Path(tmp) / filename, dest)
                return
        raise failure or RuntimeError("no MNIST mirror configured")

    return fetch


def parse_idx(data: bytes, path: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
    """Decode an IDX file (big-endian header, uint8 body) and check its shape."""
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated or corrupt: {len(data)} bytes, shorter than an IDX header")
    got_magic = int.from_bytes(data[:4], "big")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if got_magic != magic or dims != shape or len(data) != header + int(np.prod(shape)):
        raise DataError(
            f"wrong array shape in {path}: IDX magic {got_magic} dims {dims} ({len(data):,} bytes),"
            f" expected magic {magic} dims {shape}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


class MNISTDataModule(ImageDataModule):
    """MNIST, 28x28, pixels / 255. The last ``val_size`` training images are the validation set
    (0: none, every one of the 60,000 is trained on).

    ``train_size`` keeps only the first ``train_size`` images of the remaining training
    split (Figure 3 trains on 1000 and on 50000 points); None keeps them all. ``n_train``
    (the weight prior's N) and the ``train_eval`` subset then refer to that reduced set.
    """

    name = "mnist"

    def __init__(self, val_size: int = 10000, verify_checksums: bool = True, train_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        require(
            isinstance(val_size, int) and not isinstance(val_size, bool) and 0 <= val_size < N_TRAIN_FILE,
            f"data.val_size must be between 0 (no validation set) and {N_TRAIN_FILE - 1}, got {val_size}",
        )
        available = N_TRAIN_FILE - val_size
        require(
            train_size is None
            or (isinstance(train_size, int) and not isinstance(train_size, bool) and 1 <= train_size <= available),
            f"data.train_size must be null (all) or between 1 and {available:,} (the training images left after"
            f" data.val_size = {val_size:,}), got {train_size}",
        )
        self.val_size = val_size
        self.train_size = train_size
        self.verify_checksums = verify_checksums
        self.labels: dict[str, torch.Tensor] = {}

    def _read(self, key: str, magic: int, shape: tuple[int, ...]) -> np.ndarray:
        spec = FILES[key]
        data = locate(spec, "MNIST", self.data_dir, self.mirror, torchvision_download(spec.name), check=self.verify_checksums)
        return parse_idx(data, spec.relpath, magic, shape)

    def load_splits(self) -> dict[str, torch.Tensor]:
        train = self._read("train_images", 2051, (N_TRAIN_FILE, 28, 28))
        train_y = self._read("train_labels", 2049, (N_TRAIN_FILE,))
        test = self._read("test_images", 2051, (N_TEST_FILE, 28, 28))
        test_y = self._read("test_labels", 2049, (N_TEST_FILE,))
        images = lambda a: torch.from_numpy(a.astype(np.float32) / 255.0).unsqueeze(1)  # noqa: E731
        x, y = images(train), torch.from_numpy(train_y.astype(np.int64))
        n_fit = N_TRAIN_FILE - self.val_size
        n_keep = n_fit if self.train_size is None else self.train_size  # the first train_size of the training split
        self.labels = {"train": y[:n_keep], "val": y[n_fit:], "test": torch.from_numpy(test_y.astype(np.int64))}
        return {"train": x[:n_keep], "val": x[n_fit:], "test": images(test)}
