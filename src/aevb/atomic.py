"""Files a reader may open at any moment (summary.json, failed.json, status.json) are written whole or not at all."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _strict(value):
    """JSON has no NaN or infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    return value


def write_json_atomic(path: Path, payload: dict) -> None:
    """Strict JSON to a temporary file beside ``path``, then renamed into place."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_strict(payload), indent=2, sort_keys=True, allow_nan=False) + "\n")
    os.replace(tmp, path)
