"""Third-party noise off, with no heavy import: aevb-train installs it before it imports torch or Lightning.

Filtered: Lightning's informational tips and device lines (``GPU available``, the litlogger tip,
``weights_only`` notes, its line on a second Ctrl-C, for which aevb writes its own), deprecation and future warnings raised outside aevb, and a few warnings
known not to apply here (in-memory data needs no loader workers; ``srun`` present but unused).
Warnings of any other kind and every error still show. ``AEVB_VERBOSE=1`` turns the filter off.
"""

from __future__ import annotations

import logging
import os
import re
import warnings

NOISE_LINES = re.compile(r"^(GPU|TPU|HPU|IPU) available|Tip:|^`Trainer\.(fit|test|validate)` stopped|"
                         r"`weights_only` was not set|^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES|"
                         r"^You are using a CUDA device .* Tensor Cores|"
                         r"Detected KeyboardInterrupt, attempting graceful shutdown")  # aevb says what it kept
NOISE_WARNINGS = (r".*The `srun` command is available on your system but is not used",
                  r".*does not have many workers",
                  r".*is smaller than the logging interval",  # metrics here are per epoch / validation
                  r".*`isinstance\(treespec, LeafSpec\)` is deprecated")
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero",
                     "lightning.fabric.utilities.rank_zero", "lightning_utilities.core.rank_zero")


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or not NOISE_LINES.search(record.getMessage())


_FILTER = _DropNoise()


def quiet_third_party() -> None:
    """Install the filters (idempotent; called by aevb-train in every process that trains)."""
    if os.environ.get("AEVB_VERBOSE", "") not in ("", "0"):
        return
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(?!aevb)")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(?!aevb)")
    for message in NOISE_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    for name in LIGHTNING_LOGGERS + ("",):
        logger = logging.getLogger(name)
        for target in (logger, *logger.handlers):  # a logger's filter sees its own records, a handler's all
            if _FILTER not in target.filters:
                target.addFilter(_FILTER)
