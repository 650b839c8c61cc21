"""A run without a validation set (``data.val_size=0``: every training image is trained on).

Nothing is validated, so nothing may wait for a val metric: the checkpoint callback saves at each epoch's end
instead of after each validation and monitors nothing (``best.ckpt`` is then the final model, see
``aevb.checkpoints.best_checkpoint``), and a callback that stops or selects by a ``val/`` metric (early
stopping and the like) is refused in one line, since it would never see one.
"""

from __future__ import annotations

from omegaconf import DictConfig, open_dict

from aevb.errors import ConfigError


def without_validation(callbacks_cfg: DictConfig) -> None:
    """Adapt the callbacks' config in place for a run with no validation set."""
    for name, node in callbacks_cfg.items():
        if not isinstance(node, DictConfig):
            continue
        monitor = str(node.get("monitor") or "")
        is_checkpoint = str(node.get("_target_", "")).endswith("ModelCheckpoint")
        if monitor.startswith("val/") and not is_checkpoint:
            raise ConfigError(f"callbacks.{name} monitors {monitor}, but data.val_size=0 leaves no validation set:"
                              f" drop it (callbacks.{name}=null) or set data.val_size > 0")
        if is_checkpoint:
            with open_dict(node):
                node.monitor = None
                node.save_on_train_epoch_end = True


def trainer_overrides(has_val: bool) -> dict:
    """Trainer arguments for the run: no validation loop at all when there is nothing to validate."""
    return {} if has_val else {"limit_val_batches": 0, "num_sanity_val_steps": 0}
