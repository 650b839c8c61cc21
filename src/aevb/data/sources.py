"""Where raw data files come from, and proof that they are the right files.

Lookup order for each file: the mirror folder (``data.mirror`` or the
``AEVB_DATA_MIRROR`` environment variable, laid out like ``../shared/data``:
``mnist/*.gz``, ``frey/frey_rawface.mat``), then ``data_dir`` (same layout),
then a download from the canonical source into ``data_dir``. A mirror that is
named but is not a folder is an error (a typo must not turn into a download). Whatever is
found is checked on the md5 of its *uncompressed* content, so a recompressed
but byte-exact ``.gz`` passes and anything else fails with a clear message.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from aevb.errors import DataError

MIRROR_ENV = "AEVB_DATA_MIRROR"


@dataclass(frozen=True)
class RawFile:
    """A file of a data set: where it lives under a mirror, and its content md5."""

    relpath: str  # e.g. "mnist/train-images-idx3-ubyte.gz"
    content_md5: str  # md5 of the uncompressed bytes
    size: int  # uncompressed size in bytes

    @property
    def name(self) -> str:
        return Path(self.relpath).name


def read_content(path: Path) -> bytes:
    """Bytes of ``path``, gunzipped when it ends in .gz; corrupt files raise DataError."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); delete it or fix the copy") from None


def verified_content(path: Path, spec: RawFile, check: bool = True) -> bytes:
    """Content of ``path`` after checking its md5 against ``spec`` (unless ``check`` is off)."""
    data = read_content(path)
    if not check:
        return data
    got = hashlib.md5(data).hexdigest()
    if got != spec.content_md5:
        raise DataError(
            f"checksum mismatch for {path}: expected md5 {spec.content_md5} of the uncompressed content, got {got}"
            f" ({len(data):,} bytes, expected {spec.size:,})"
        )
    return data


def mirror_root(configured: str | None) -> Path | None:
    """The mirror folder from config, else from $AEVB_DATA_MIRROR, else None."""
    value = configured or os.environ.get(MIRROR_ENV) or None
    if value is None:
        return None
    root = Path(value).expanduser()
    if not root.is_dir():
        raise DataError(f"data mirror {root} is not a folder (set by data.mirror or ${MIRROR_ENV})")
    return root


def locate(
    spec: RawFile,
    dataset: str,
    data_dir: str | os.PathLike,
    mirror: str | None,
    download: Callable[[Path], None] | None,
    check: bool = True,
) -> bytes:
    """Find, (maybe) download, and verify one raw file; return its uncompressed content.

    The mirror is tried first, then ``data_dir``, then the download (into ``data_dir``).
    """
    root = mirror_root(mirror)
    if root is not None and (root / spec.relpath).is_file():
        return verified_content(root / spec.relpath, spec, check)
    where = f"the data mirror {root} and {Path(data_dir).resolve()}" if root else str(Path(data_dir).resolve())
    local = Path(data_dir) / spec.relpath
    if not local.is_file() and download is not None:
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            download(local)
        except Exception as exc:  # network errors come in many types; all mean the same here
            raise DataError(
                f"{dataset}: {spec.relpath} is missing from {where}, and the download failed"
                f" ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'});"
                f" point at a local copy with {MIRROR_ENV}=/path/to/data (laid out like ../shared/data)"
                " or data.mirror=/path/to/data"
            ) from None
    if not local.is_file():
        raise DataError(f"{dataset}: {spec.relpath} is missing from {where}; set {MIRROR_ENV}=/path/to/data")
    return verified_content(local, spec, check)


def move_into_place(src: Path, dst: Path) -> None:
    """Atomic-ish rename so a killed download never leaves a half file at ``dst``."""
    tmp = dst.with_suffix(dst.suffix + ".part")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
