"""The fast training path: the same training, inside Lightning, without per-step host work.

Switched by the ``fast`` config block (``fast.enabled``, on by default). The training
images live on the training device, batches are drawn there by index in the standard
loop's order, each ``training_step`` runs a chunk of optimiser steps (manual
optimisation) that ends exactly where the standard loop would validate, checkpoint,
draw a curve point or stop, and on CUDA the whole step is compiled (aevb.fast.functional) and
one CUDA graph, both checked against the eager step first (aevb.fast.self_check). Trainer
settings it does not cover keep the standard loop,
with one line saying why.
"""

from __future__ import annotations

from types import MethodType

from aevb.fast.loop import FastLoop


def why_not(trainer, model) -> str | None:
    """Why this run cannot take the fast path, or None."""
    if not hasattr(model, "training_loss") and not hasattr(model, "wake_terms"):
        return f"{type(model).__name__} is neither AEVB nor wake-sleep, the methods the fast path runs"
    if getattr(model, "phases", "sequential") != "sequential":
        return f"model.phases={model.phases} (the old wake-sleep order) runs on the standard loop"
    if str(trainer.precision) not in ("32-true", "32"):
        return f"precision {trainer.precision} (the fast path runs 32-bit)"
    if trainer.accumulate_grad_batches != 1 or trainer.gradient_clip_val:
        return "gradient accumulation or clipping is set"
    if trainer.limit_train_batches not in (1.0, None) or getattr(trainer, "_val_check_time_interval", None):
        return "limit_train_batches or a time-based val_check_interval is set"
    return None


def enable_fast_path(cfg, trainer, model, dm) -> FastLoop | None:
    """Put this run on the fast path when ``cfg.enabled`` and the run allows it; say which loop runs."""
    if cfg is None or not cfg.get("enabled", False):
        return None
    steps, compile = cfg.get("steps_per_call", 100), str(cfg.get("compile", "auto")).lower()  # checked by cli.check_values
    reason = why_not(trainer, model)
    if reason is not None:
        print(f"training loop: standard ({reason})", flush=True)
        return None
    loop = FastLoop(model, dm, steps_per_call=steps, compile=compile, cuda_graph=cfg.get("cuda_graph", True),
                    val_check_interval=trainer.val_check_interval, val_global=trainer.check_val_every_n_epoch is None,
                    self_check=cfg.get("self_check", True))
    trainer.val_check_interval = 1.0  # Lightning counts chunks, not steps: the loop decides validation itself
    epoch_loop = trainer.fit_loop.epoch_loop
    epoch_loop._should_check_val_fx = MethodType(lambda el, _fetcher: loop.should_validate(el), epoch_loop)
    model.automatic_optimization = False
    model.fast_loop = dm.fast_loop = loop
    print(f"training loop: fast (resident data, up to {steps} steps per training_step, compile {compile})", flush=True)
    return loop
