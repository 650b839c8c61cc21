"""A useful console: aevb's own lines and a progress bar that says what matters (the filters that keep
third-party noise off are in aevb.quiet, which needs no heavy import)."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from aevb.quiet import quiet_third_party  # noqa: F401  (re-exported: the console's filters)


def running_train_elbo(trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[float, int] | None:
    """(mean, datapoints) of the training ELBO over this epoch's batches so far, all ranks; None before any.

    Read from the module's running meter (its sum and count), so it costs one small reduction, no pass.
    Call on every rank (it is a collective under DDP).
    """
    import torch

    meters = getattr(pl_module, "meters", None)
    if meters is None or "train_elbo" not in meters:
        return None
    meter = meters["train_elbo"]
    state = torch.stack([meter.mean_value.double(), meter.weight.double()])
    if trainer.world_size > 1:
        state = trainer.strategy.reduce(state, reduce_op="sum")
    total, n = (float(v) for v in state)
    return (total / n, int(n)) if n > 0 else None


def _pack_member() -> str:
    """"[job N] " inside a packed sweep, whose members share one console (aevb.packed); else ""."""
    from aevb.packed.coordinator import active_pack

    if active_pack() is None:
        return ""
    from hydra.core.hydra_config import HydraConfig

    return f"[job {HydraConfig.get().job.num}] "


class ValidationReport(L.Callback):
    """One line per validation: epoch, step, training samples evaluated, the val ELBO just computed and the
    running training ELBO of the same epoch (nats per datapoint), each with its datapoint count."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        train = running_train_elbo(trainer, pl_module)
        m = trainer.callback_metrics
        if not trainer.is_global_zero or m.get("val/elbo") is None:
            return
        n_val = f"{int(m['val/n_datapoints']):,}" if m.get("val/n_datapoints") is not None else "?"
        line = (f"{_pack_member()}epoch {trainer.current_epoch:>3} step {trainer.global_step:>7,} |"
                f" {int(getattr(pl_module, 'samples_seen', 0)):>11,} training samples |"
                f" val ELBO {float(m['val/elbo']):9.2f} nats/datapoint"
                f" ({n_val} val images)")
        if train is not None:
            line += f" | train ELBO {train[0]:9.2f} (running mean, this epoch's {train[1]:,} samples)"
        print(line, flush=True)


class ProgressBar(RichProgressBar):
    """Rich bar with the running training ELBO and the samples evaluated; ``Epoch e`` (``e/last`` only when
    the budget is in epochs); no bars for the final evaluation. The ELBO is read every ``elbo_every`` steps
    (one host sync each time), not at every refresh."""

    def __init__(self, *args, elbo_every: int = 50, console_kwargs: dict | None = None, **kwargs):
        import sys

        if not sys.stdout.isatty():  # a log file: one line wide enough for the bar and its numbers
            console_kwargs = {"width": 120, **(console_kwargs or {})}
        super().__init__(*args, console_kwargs=console_kwargs, **kwargs)
        self.elbo_every, self._elbo, self._elbo_step = elbo_every, None, -1

    def configure_columns(self, trainer: L.Trainer) -> list:
        columns = super().configure_columns(trainer)
        columns[1].bar_width = 20  # room for the metrics on one line
        return columns

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}" if len(self.validation_description) > len(text) else text

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        step = trainer.global_step
        if self._elbo is None or step - self._elbo_step >= self.elbo_every:
            meters = getattr(pl_module, "meters", None)
            if meters is not None and "train_elbo" in meters and float(meters["train_elbo"].weight) > 0:
                meter = meters["train_elbo"]
                self._elbo, self._elbo_step = float(meter.mean_value / meter.weight), step  # this rank's batches
        out = {"samples": f"{int(getattr(pl_module, 'samples_seen', 0)):,}"}
        if self._elbo is not None:
            out["train ELBO"] = f"{self._elbo:.1f} nats/datapoint (running mean)"
        return out

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elbo = None  # show the value the validation line just printed
        super().on_validation_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        chunk = getattr(getattr(pl_module, "fast_loop", None), "last_chunk", None)
        # the fast path's "batch" is a chunk of steps: the bar counts steps of the epoch, as its total does
        super().on_train_batch_end(trainer, pl_module, outputs, batch, chunk.stop - 1 if chunk is not None else batch_idx)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elbo = None  # the bar's last state shows the whole epoch's mean
        super().on_train_epoch_end(trainer, pl_module)

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.disable()  # the final evaluation prints its own report

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.enable()
        super().on_test_end(trainer, pl_module)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "test":  # stopping the finished bar again after each test() prints an empty line
            super().teardown(trainer, pl_module, stage)
