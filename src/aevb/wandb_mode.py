"""Decide whether wandb runs offline (yes, unless the user has configured an account), and start wandb's
set-up early, in the background, so its import and service process overlap torch's and Lightning's imports."""

from __future__ import annotations

import netrc
import os
import threading
from pathlib import Path

_PRESTART: dict = {"thread": None}


def account_configured() -> bool:
    if os.environ.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun"):
        return False
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_MODE", "").lower() == "online":
        return True
    try:
        return netrc.netrc(Path.home() / ".netrc").authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def offline() -> bool:
    return not account_configured()


def register_resolver() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("aevb_wandb_offline"):
        OmegaConf.register_new_resolver("aevb_wandb_offline", offline)


def setup_wandb(offline: bool) -> None:
    """wandb's global set-up with its info lines off (warnings and errors stay); offline as Lightning would make
    it, through WANDB_MODE, before the global settings exist."""
    import wandb

    if offline:
        os.environ["WANDB_MODE"] = "dryrun"
    wandb.setup(settings=wandb.Settings(show_info=False))


def prestart(logger_cfg) -> None:
    """Run ``setup_wandb`` in a background thread when a wandb logger is configured (once per process, rank 0
    only, not with AEVB_VERBOSE); the logger waits for it (``wait_for_prestart``) before it starts its run."""
    if _PRESTART["thread"] is not None or os.environ.get("AEVB_VERBOSE", "") not in ("", "0"):
        return
    if any(os.environ.get(v, "0") != "0" for v in ("RANK", "LOCAL_RANK", "SLURM_PROCID")):
        return
    try:
        register_resolver()
        nodes = [n for n in (logger_cfg or {}).values() if n is not None and "Wandb" in str(n.get("_target_", ""))]
        if not nodes:
            return
        offline = bool(nodes[0].get("offline", False))
    except Exception:  # an optimisation only: the logger reports any real problem itself
        return

    def quietly():
        try:
            setup_wandb(offline)
        except Exception:
            pass

    _PRESTART["thread"] = threading.Thread(target=quietly, name="aevb-wandb-setup", daemon=True)
    _PRESTART["thread"].start()


def wait_for_prestart() -> None:
    thread = _PRESTART["thread"]
    if thread is not None and thread is not threading.current_thread():
        thread.join()
