"""Frey Face: 1965 frames of 28 x 20 pixels (Roweis's frey_rawface.mat), pixels / 256 as in the authors' code.

Split: a permutation of the frame indices drawn with ``torch.Generator().manual_seed(split_seed)``
(default 0); the first ``test_size`` frames (default 200) are the test set, the next
``val_size`` (default 200) the validation set, the remaining 1565 the training set.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import numpy as np
import torch

from aevb.data.base import ImageDataModule, seeded_split
from aevb.data.sources import RawFile, locate, move_into_place
from aevb.errors import DataError, require

FILE = RawFile("frey/frey_rawface.mat", "5aeb024d42b8a6091f30e5eb18c8a48d", 1_100_584)
URL = "https://cs.nyu.edu/~roweis/data/frey_rawface.mat"
N_FRAMES, HEIGHT, WIDTH = 1965, 28, 20


def download(dest: Path) -> None:
    from torchvision.datasets.utils import download_url

    with tempfile.TemporaryDirectory() as tmp:
        download_url(URL, tmp, FILE.name, FILE.content_md5)
        move_into_place(Path(tmp) / FILE.name, dest)


def parse_mat(data: bytes, path: str) -> np.ndarray:
    """Return the ``ff`` array (560 x 1965 uint8) of a MATLAB file, or a clear DataError."""
    from scipy.io import loadmat

    try:
        mat = loadmat(io.BytesIO(data))
    except Exception as exc:  # scipy raises ValueError, TypeError, MatReadError... for bad bytes
        raise DataError(f"{path} is truncated or corrupt: not a readable MATLAB file ({type(exc).__name__})") from None
    if "ff" not in mat:
        raise DataError(f"{path} has no variable 'ff' (found: {', '.join(k for k in mat if not k.startswith('__'))})")
    ff = mat["ff"]
    if ff.shape != (HEIGHT * WIDTH, N_FRAMES) or ff.dtype != np.uint8:
        raise DataError(
            f"wrong array shape in {path}: ff is {ff.dtype} {ff.shape}, expected uint8 {(HEIGHT * WIDTH, N_FRAMES)}"
        )
    return ff


class FreyFaceDataModule(ImageDataModule):
    name = "frey_face"

    def __init__(self, val_size: int = 200, test_size: int = 200, split_seed: int = 0, verify_checksums: bool = True, **kwargs):
        super().__init__(**kwargs)
        require(
            isinstance(val_size, int) and isinstance(test_size, int) and val_size >= 0 and test_size > 0
            and val_size + test_size < N_FRAMES,
            f"data.val_size must be >= 0 (0: no validation set) and data.test_size > 0, leaving training frames,"
            f" got {val_size} and {test_size}",
        )
        self.val_size, self.test_size, self.split_seed = val_size, test_size, split_seed
        self.verify_checksums = verify_checksums

    def load_splits(self) -> dict[str, torch.Tensor]:
        data = locate(FILE, "Frey Face", self.data_dir, self.mirror, download, check=self.verify_checksums)
        ff = parse_mat(data, FILE.relpath)
        # anglepy: loadmat(...)['ff'].T / 256. -> (1965, 560) rows in (28, 20) row-major pixel order
        x = torch.from_numpy(ff.T.astype(np.float32) / 256.0).reshape(N_FRAMES, 1, HEIGHT, WIDTH)
        return seeded_split(x, self.test_size, self.val_size, self.split_seed)
