"""One formula for seeds derived from a base seed, so streams never collide by accident."""

from __future__ import annotations

import zlib


def derived_seed(seed: int, key: int | str) -> int:
    """``seed * 1_000_003 + key`` (a string key through CRC-32): e.g. one stream per epoch or per split."""
    return int(seed) * 1_000_003 + (zlib.crc32(key.encode()) if isinstance(key, str) else int(key))
