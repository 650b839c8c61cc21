"""Decide whether wandb runs offline: yes, unless the user has configured an account."""

from __future__ import annotations

import netrc
import os
from pathlib import Path


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
