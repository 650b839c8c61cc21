"""LightningModules: AEVB (and, sharing its evaluation, other training methods)."""

from aevb.models.aevb import AEVB
from aevb.models.base import VAEModuleBase
from aevb.models.wake_sleep import WakeSleep

__all__ = ["AEVB", "VAEModuleBase", "WakeSleep"]
