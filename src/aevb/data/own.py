"""Your own images: a folder of PNG/JPEG files (``data=image_folder``) or one array file (``data=array``).

Both become the same resident (N, C, H, W) float tensor with pixels in [0, 1] that MNIST and Frey Face are,
so every backbone, both methods, the fast path and packs serve them unchanged. The split into train / val /
test is a seeded permutation of the images in a fixed order (sorted file names, the array's rows), so a
resumed run sees the same split; the checkpoint also carries a fingerprint of the data and a resume on
other data is refused in one line.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from aevb.data.base import ImageDataModule, seeded_split
from aevb.errors import DataError, require

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz", ".pt")


class OwnDataModule(ImageDataModule):
    """Shared by both sources: the size check, the resize, the seeded split and the data fingerprint.

    ``val_fraction`` / ``test_fraction`` of the images (rounded down; 0 allowed for val) go to val / test,
    the rest to training. ``size`` ([H, W] or null) resizes every image (bilinear, antialiased); null needs
    all images the same size.
    """

    name = "own"

    def __init__(self, path: str | None = None, size=None, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 split_seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        require(path not in (None, ""), f"data.path is required for data={self.name} (the folder or file to read)")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            require(isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1,
                    f"data.{key} must be a number in [0, 1), got {value!r}")
        require(val_fraction + test_fraction < 1, "data.val_fraction + data.test_fraction must leave training images")
        if size is not None:
            size = list(size) if not isinstance(size, int) else [size, size]
            require(len(size) == 2 and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size),
                    f"data.size must be null, a positive integer or [height, width], got {size!r}")
        self.path, self.size = Path(str(path)).expanduser(), size
        self.val_fraction, self.test_fraction, self.split_seed = val_fraction, test_fraction, split_seed
        self.fingerprint: str | None = None

    def read(self) -> torch.Tensor:
        """(N, C, H, W) float tensor in [0, 1], in a fixed order."""
        raise NotImplementedError

    def load_splits(self) -> dict[str, torch.Tensor]:
        require(self.path.exists(), f"data.path {self.path} does not exist")
        x = self.read()
        if self.size is not None and tuple(x.shape[-2:]) != tuple(self.size):
            x = F.interpolate(x, size=tuple(self.size), mode="bilinear", antialias=True, align_corners=False)
            x = x.clamp_(0.0, 1.0)
        n = len(x)
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        require(n_test >= 1 and n - n_test - n_val >= 1,
                f"{n} image(s) in {self.path} are too few for a test split of {self.test_fraction} and a"
                f" val split of {self.val_fraction} (at least one test and one training image)")
        digest = hashlib.sha256(x.numpy().tobytes()).hexdigest()[:16]
        self.fingerprint = f"{n}x{'x'.join(map(str, x.shape[1:]))}:{digest}:seed{self.split_seed}"
        return seeded_split(x, n_test, n_val, self.split_seed)

    # the checkpoint carries the data's fingerprint: a resume on other images is refused
    def state_dict(self) -> dict:
        return {**super().state_dict(), "fingerprint": self.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        saved = (state or {}).get("fingerprint")
        self.setup()
        if saved is not None and saved != self.fingerprint:
            raise DataError(f"the images in {self.path} are not the ones this checkpoint was trained on"
                            f" (fingerprint {self.fingerprint}, the checkpoint's {saved}): resume with the same data")
        super().load_state_dict({k: v for k, v in (state or {}).items() if k != "fingerprint"})


def _to_unit(a: np.ndarray, what: str) -> np.ndarray:
    """uint8 -> / 255; floats must already lie in [0, 1] (the support of both likelihoods' means)."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    require(np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer) or a.dtype == bool,
            f"{what}: dtype {a.dtype} is not an image type (uint8 or float in [0, 1])")
    a = a.astype(np.float32)
    if a.size:
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        require(not np.isnan(a).any() and lo >= 0.0 and hi <= 1.0,
                f"{what}: values must lie in [0, 1] (uint8 is divided by 255), found {lo:g} .. {hi:g}")
    return a


class ImageFolderDataModule(OwnDataModule):
    """Every PNG/JPEG file under ``path`` (sub-folders, e.g. one per class, are read and their names ignored),
    sorted by relative path; grayscale unless any file has colour (then all RGB)."""

    name = "image_folder"

    def read(self) -> torch.Tensor:
        from PIL import Image, UnidentifiedImageError

        require(self.path.is_dir(), f"data.path {self.path} is not a folder (data=array reads one file)")
        files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        require(bool(files), f"data.path {self.path} holds no {'/'.join(s[1:].upper() for s in IMAGE_SUFFIXES)}"
                             " files")
        images, names = [], [str(p.relative_to(self.path)) for p in files]
        for p in files:
            try:
                with Image.open(p) as im:
                    im.load()
                    images.append(im.copy())
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
                raise DataError(f"cannot read image {p}: {' '.join(str(exc).split()) or type(exc).__name__}") from None
        colour = any(im.mode not in ("1", "L", "LA", "I", "I;16", "F") for im in images)
        mode = "RGB" if colour else "L"
        if self.size is None:
            sizes = {}
            for im, name in zip(images, names):
                sizes.setdefault(im.size, name)
            if len(sizes) > 1:
                (s1, f1), (s2, f2) = list(sizes.items())[:2]
                raise DataError(f"images in {self.path} differ in size ({f1}: {s1[0]}x{s1[1]}, {f2}: {s2[0]}x{s2[1]},"
                                f" width x height): set data.size=[height,width] to resize them")
            arrays = [np.asarray(im.convert(mode)) for im in images]
        else:  # resized here, one by one, so files of different sizes stack
            h, w = self.size
            arrays = [np.asarray(im.convert(mode).resize((w, h), Image.Resampling.BILINEAR)) for im in images]
        a = np.stack(arrays)
        a = a[:, None] if a.ndim == 3 else a.transpose(0, 3, 1, 2)  # (N, C, H, W)
        return torch.from_numpy(np.ascontiguousarray(_to_unit(a, str(self.path))))


class ArrayDataModule(OwnDataModule):
    """One ``.npy`` / ``.npz`` (its ``key``, or its only array) / ``.pt`` (a tensor) file of N x H x W or
    N x C x H x W images, uint8 (divided by 255) or float in [0, 1]."""

    name = "array"

    def __init__(self, key: str | None = None, **kwargs):
        super().__init__(**kwargs)
        self.key = key

    def read(self) -> torch.Tensor:
        p = self.path
        require(p.is_file(), f"data.path {p} is not a file (data=image_folder reads a folder)")
        require(p.suffix.lower() in ARRAY_SUFFIXES,
                f"data.path {p}: expected a {', '.join(ARRAY_SUFFIXES)} file, got '{p.suffix}'")
        try:
            if p.suffix.lower() == ".pt":
                obj = torch.load(p, map_location="cpu", weights_only=True)
                require(isinstance(obj, torch.Tensor), f"{p} holds a {type(obj).__name__}, not one tensor")
                a = obj.numpy()
            else:
                obj = np.load(p, allow_pickle=False)
                if isinstance(obj, np.lib.npyio.NpzFile):
                    keys = list(obj.keys())
                    require(self.key in keys if self.key else len(keys) == 1,
                            f"{p} holds the arrays {', '.join(keys) or '(none)'}: name one with data.key=")
                    a = obj[self.key or keys[0]]
                else:
                    a = obj
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"cannot read array file {p}: {' '.join(str(exc).split())[:200]}") from None
        require(a.ndim in (3, 4) and len(a) > 0 and all(s > 0 for s in a.shape),
                f"{p}: expected N x H x W or N x C x H x W images, got shape {tuple(a.shape)}")
        a = a[:, None] if a.ndim == 3 else a
        return torch.from_numpy(np.ascontiguousarray(_to_unit(a, str(p))))
