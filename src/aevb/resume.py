"""What exact resume needs beyond Lightning's own state: random generators, and a check of the checkpoint
against the configured model *before* the run folder is touched."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from aevb.errors import ConfigError


def capture_rng() -> dict:
    """Every random generator a training step draws from (torch CPU and CUDA, Python, NumPy)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain Python values only: Lightning loads checkpoints with weights_only=True
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def read_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint on the CPU; a missing or unreadable file is a ConfigError (one line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, wrong file type, ...
        raise ConfigError(f"ckpt_path {path} is not a readable checkpoint ({type(exc).__name__})") from None


def check_resumable(path: str | Path, model: torch.nn.Module) -> None:
    """Refuse, in one line, a checkpoint of another model class or with other parameter shapes."""
    ckpt = read_checkpoint(path)
    want = f"{type(model).__module__}.{type(model).__qualname__}"
    saved_target = (ckpt.get("aevb_config") or {}).get("model", {}).get("_target_")
    if saved_target and saved_target.rsplit(".", 1)[-1] != type(model).__name__:
        raise ConfigError(f"ckpt_path {path} holds a {saved_target} model, the config builds {want}")
    saved = {k: tuple(v.shape) for k, v in ckpt.get("state_dict", {}).items() if hasattr(v, "shape")}
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    differ = sorted(k for k in saved.keys() | built.keys() if saved.get(k) != built.get(k))
    if differ:
        shown = ", ".join(f"{k} (checkpoint {saved.get(k, 'absent')}, config {built.get(k, 'absent')})"
                          for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise ConfigError(f"ckpt_path {path} does not match the configured model: {shown}{more};"
                          " resume with the run's own config (its config_resolved.yaml)")
