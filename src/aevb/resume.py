"""What exact resume needs beyond Lightning's own state: random generators, and a check of the checkpoint
against the configured model *before* the run folder is touched."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from aevb.errors import ConfigError


def _cuda_device(device) -> torch.device | None:
    """The CUDA device whose generator a run draws from: ``device`` if it is one, else (None) the current one;
    None when CUDA is not in use."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    if device is None:
        return torch.device("cuda", torch.cuda.current_device())
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())


def capture_rng(device=None) -> dict:
    """Every random generator a training step draws from: torch CPU, the training device's CUDA generator (not
    every GPU's: a job pinned to one GPU may resume on a node with more), Python, NumPy."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    # tensors and plain Python values only: Lightning loads checkpoints with weights_only=True
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    cuda = _cuda_device(device)
    if cuda is not None:
        state["cuda_device"] = torch.cuda.get_rng_state(cuda)
    return state


def restore_rng(state: dict, device=None) -> None:
    """Restore ``capture_rng``'s state; the CUDA generator goes to the device this run trains on (under DDP each
    rank's own device: every rank was seeded alike, so rank 0's saved state is every rank's)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    cuda = _cuda_device(device)
    if cuda is not None and "cuda_device" in state:
        torch.cuda.set_rng_state(state["cuda_device"], cuda)
    elif cuda is not None and "cuda" in state and len(state["cuda"]) > (cuda.index or 0):
        torch.cuda.set_rng_state(state["cuda"][cuda.index or 0], cuda)  # written before: every GPU's state


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
