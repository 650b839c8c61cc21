"""Rebuild a trained model from a checkpoint alone (its resolved config travels inside it)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import OmegaConf

from aevb.building import build
from aevb.errors import AevbError


def load_model(ckpt_path: str | Path, map_location: str = "cpu", data_module=None):
    """Return (model in eval mode, data module, resolved config) for a checkpoint written by aevb-train."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise AevbError(f"checkpoint {path} not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated zip, wrong file type, ...
        raise AevbError(f"{path} is not a readable checkpoint ({type(exc).__name__})") from None
    if "aevb_config" not in ckpt:
        raise AevbError(f"{path} was not written by aevb-train (no aevb_config inside)")
    run_config = _upgrade(ckpt["aevb_config"])
    cfg = OmegaConf.create(run_config)
    mirror = cfg.data.get("mirror")
    if mirror and not Path(mirror).is_dir():
        cfg.data.mirror = None  # written on another machine: fall back to $AEVB_DATA_MIRROR / data_dir
    dm, model = build(cfg, data_module=data_module, run_config=run_config)
    model.load_state_dict(ckpt["state_dict"])
    model.on_load_checkpoint(ckpt)
    return model.eval(), dm, cfg


def _upgrade(run_config: dict) -> dict:
    """A config from before ``paper:`` existed kept data.likelihood / data.paper_hidden_dim: move them there."""
    data = dict(run_config["data"])
    if "likelihood" not in data:
        return run_config
    paper = {"likelihood": data.pop("likelihood"), "hidden_dim": data.pop("paper_hidden_dim", None)}
    return {**run_config, "data": data, "paper": paper}


def load_as(cls, ckpt_path: str | Path, map_location=None):
    """The model of ``ckpt_path``, which must be a ``cls`` (the body of ``<Model>.load_from_checkpoint``)."""
    model, _dm, _cfg = load_model(ckpt_path, map_location=map_location or "cpu")
    if not isinstance(model, cls):
        kind = type(model).__name__
        raise AevbError(f"{ckpt_path} holds a {kind} model, not {cls.__name__}: use {kind}.load_from_checkpoint")
    return model


def best_checkpoint(trainer, final_val_elbo: float | None) -> str | None:
    """Make ``best.ckpt`` the model with the highest val ELBO among the validations during fit *and the final
    model* (its val ELBO from the final evaluation), so every finished run has one, also when no validation
    ran (a budget under one epoch). Call after last.ckpt holds the final model; returns a line for the report."""
    import shutil

    cb = trainer.checkpoint_callback
    if final_val_elbo is None and cb is not None and cb.dirpath is not None and "{" not in (cb.filename or "{"):
        return _final_is_best(Path(cb.dirpath), cb.filename, int(trainer.global_step))  # no validation set
    if cb is None or cb.dirpath is None or cb.monitor != "val/elbo" or "{" in (cb.filename or "{"):
        return None
    best, last = Path(cb.dirpath) / f"{cb.filename}.ckpt", Path(cb.dirpath) / "last.ckpt"
    score = None if cb.best_model_score is None else float(cb.best_model_score)
    # the final val ELBO competes only when it covered the same datapoints as the validations during fit
    comparable = trainer.limit_val_batches == trainer.limit_test_batches
    better = score is None or (comparable and (final_val_elbo > score if cb.mode == "max" else final_val_elbo < score))
    if better:
        tmp = best.with_name(f".{best.name}.tmp")
        shutil.copyfile(last, tmp)
        os.replace(tmp, best)  # atomic, like every checkpoint aevb writes
    return best_line(better, int(trainer.global_step), None if better else saved_step(best), final_val_elbo, score)


def _final_is_best(dirpath: Path, filename: str, step: int) -> str:
    """Without a validation set nothing ranks the models: best.ckpt is the final model."""
    import shutil

    best = dirpath / f"{filename}.ckpt"
    tmp = best.with_name(f".{best.name}.tmp")
    shutil.copyfile(dirpath / "last.ckpt", tmp)
    os.replace(tmp, best)
    return f"best.ckpt: the final model, same as last.ckpt (step {step:,}); no validation set (data.val_size=0)"


def saved_step(ckpt: Path) -> int | None:
    """The global step a checkpoint was saved at (read without loading its tensors), None if unreadable."""
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception:
        return None


def best_line(better: bool, last_step: int, best_step: int | None, final_val_elbo: float,
              score: float | None) -> str:
    """The report's line on best.ckpt and last.ckpt (the final model, at ``last_step``); it says when they are
    the same model. ``better``: the final model was copied to best.ckpt; else best.ckpt is the validation during
    fit at ``best_step`` with val ELBO ``score`` (the same model as last.ckpt when that is ``last_step``: no
    training step between that validation and the end)."""
    if better or best_step == last_step:
        return (f"best.ckpt: the final model, same as last.ckpt (step {last_step:,}),"
                f" val ELBO {final_val_elbo:.2f} nats/datapoint")
    if best_step is None:  # best.ckpt unreadable: its step unknown
        return f"best.ckpt: a validation during fit, val ELBO {score:.2f} nats/datapoint; last.ckpt: the final model"
    return f"best.ckpt: step {best_step:,}, val ELBO {score:.2f} nats/datapoint; last.ckpt: final model, step {last_step:,}"


def resolve_checkpoint(arg: str | Path) -> Path:
    """A checkpoint file, or a run directory holding checkpoints/last.ckpt."""
    p = Path(arg)
    if p.is_dir():
        for candidate in (p / "checkpoints" / "last.ckpt", p / "last.ckpt"):
            if candidate.is_file():
                return candidate
        raise AevbError(f"checkpoint not found: {p} is a directory without checkpoints/last.ckpt")
    if not p.is_file():
        raise AevbError(f"checkpoint {p} not found")
    return p


def run_dir_of(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to (<run>/checkpoints/x.ckpt -> <run>)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
