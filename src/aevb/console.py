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


WIDTH = 100  # every line aevb prints fits this many columns; so does the bar in a log file


def fit(*candidates: str) -> str:
    """The first of ``candidates`` (most informative first) that fits WIDTH columns, else the last."""
    return next((c for c in candidates if len(c) <= WIDTH), candidates[-1])


def _pack_member() -> str:
    """"[job N] " inside a packed sweep, whose members share one console (aevb.packed); else ""."""
    from aevb.packed.coordinator import active_pack

    if active_pack() is None:
        return ""
    from hydra.core.hydra_config import HydraConfig

    return f"[job {HydraConfig.get().job.num}] "


LEGEND = "ELBO in nats/datapoint; train = running mean over this epoch so far, its early steps included"


def validation_line(job: str, epoch: int, step: int, samples: int, val: float, n_val: str,
                    train: float | None) -> str:
    """One validation's line: aligned while the numbers are small, compact (and without the step) when a long
    run's or a pack member's line would not fit WIDTH."""
    tr = "" if train is None else f" | train {train:8.2f}"
    trc = "" if train is None else f" | train {train:.2f}"
    return fit(f"{job}epoch {epoch:>3} step {step:>6,} {samples:>9,} samples | val ELBO {val:8.2f}"
               f" ({n_val} val images){tr}",
               f"{job}epoch {epoch} step {step:,} {samples:,} samples | val ELBO {val:.2f} ({n_val} val images){trc}",
               f"{job}epoch {epoch} {samples:,} samples | val ELBO {val:.2f} ({n_val} val images){trc}")


class ValidationReport(L.Callback):
    """One line per validation: epoch, step, training samples evaluated, the val ELBO just computed (with its
    count of val images) and the running training ELBO of the same epoch; the units and what the running mean
    is are said once, in a legend line when training starts."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and trainer.state.fn == "fit":
            print(f"{_pack_member()}{LEGEND}", flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        train = running_train_elbo(trainer, pl_module)
        m = trainer.callback_metrics
        if not trainer.is_global_zero or m.get("val/elbo") is None:
            return
        n_val = f"{int(m['val/n_datapoints']):,}" if m.get("val/n_datapoints") is not None else "?"
        print(validation_line(_pack_member(), trainer.current_epoch, trainer.global_step,
                              int(getattr(pl_module, "samples_seen", 0)), float(m["val/elbo"]), n_val,
                              None if train is None else train[0]), flush=True)


# -- pace: training samples per second and the time left to the budget ------------------------------------------
def samples_per_second(samples: int, seconds: float) -> float | None:
    """``samples`` training samples evaluated in ``seconds`` of training; None before any."""
    return samples / seconds if samples > 0 and seconds > 0 else None


def eta_seconds(samples_left: int | None, samples_done: int, seconds: float) -> float | None:
    """Seconds until ``samples_left`` more samples are evaluated at the pace of ``samples_done`` in ``seconds``
    (wall time, validations included: they recur until the end); None while unknown."""
    if samples_left is None:
        return None
    if samples_left <= 0:
        return 0.0
    rate = samples_per_second(samples_done, seconds)
    return samples_left / rate if rate else None


def budget_steps(trainer: L.Trainer) -> int | None:
    """The global step training ends at: max_steps (set from max_samples), max_epochs x steps per epoch, the
    smaller of the two; None when neither bounds it. Lightning's batches per epoch are optimiser steps on both
    loops (the fast path's "dataloader" has one entry per step, aevb.fast.plan.ResidentBatches), although one
    of its batches is a chunk of up to fast.steps_per_call steps."""
    import math

    bounds = []
    if trainer.max_steps is not None and trainer.max_steps > 0:
        bounds.append(int(trainer.max_steps))
    per_epoch = trainer.num_training_batches
    if trainer.max_epochs is not None and trainer.max_epochs > 0 and math.isfinite(per_epoch) and per_epoch > 0:
        bounds.append(int(trainer.max_epochs * per_epoch))
    return min(bounds) if bounds else None


def samples_left(trainer: L.Trainer) -> int | None:
    """Training samples still to evaluate before the budget, all ranks (the data's batch plan counts them)."""
    end = budget_steps(trainer)
    plan = getattr(getattr(trainer, "datamodule", None), "batch_plan", None)
    if end is None or plan is None:
        return None
    plan = plan(trainer.world_size)
    return max(0, plan.samples(end) - plan.samples(trainer.global_step))


class Pace:
    """Clocks of one fit: wall time since training started, and training time (the same less validations)."""

    def __init__(self, clock=None):
        import time

        self.clock = clock or time.monotonic
        self.started, self.samples0, self.paused_s, self._pause_at = None, 0, 0.0, None

    def start(self, samples_seen: int) -> None:
        self.started, self.samples0, self.paused_s, self._pause_at = self.clock(), int(samples_seen), 0.0, None

    def pause(self) -> None:
        if self.started is not None and self._pause_at is None:
            self._pause_at = self.clock()

    def resume(self) -> None:
        if self._pause_at is not None:
            self.paused_s += self.clock() - self._pause_at
            self._pause_at = None

    def rate(self, samples_seen: int) -> float | None:
        """Training samples per second since training started, time in validation left out."""
        if self.started is None:
            return None
        now = self._pause_at if self._pause_at is not None else self.clock()
        return samples_per_second(samples_seen - self.samples0, now - self.started - self.paused_s)

    def eta(self, samples_seen: int, left: int | None) -> float | None:
        if self.started is None:
            return None
        return eta_seconds(left, samples_seen - self.samples0, self.clock() - self.started)


def format_rate(rate: float | None) -> str:
    if rate is None:
        return "-- samples/s"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if rate >= scale:
            return f"{rate / scale:.3g}{suffix} samples/s"
    return f"{rate:.3g} samples/s"


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def status_text(samples_seen: int, rate: float | None, eta: float | None, elbo: float | None) -> str:
    """What the bar says after its steps count: samples so far, their rate, the time left, the running ELBO."""
    text = f"{samples_seen:,} samples  {format_rate(rate)}  ETA {format_duration(eta)}"
    return text + (f"  ELBO {elbo:.1f} (epoch mean)" if elbo is not None else "")


def _status_column(bar: "ProgressBar"):
    from rich.progress import ProgressColumn
    from rich.text import Text

    class StatusColumn(ProgressColumn):
        """The bar's status text on the training bar; it never wraps (cut with an ellipsis when too narrow)."""

        def render(self, task) -> Text:
            text = bar.status if task.id == bar.train_progress_bar_id else ""
            return Text(text, no_wrap=True, overflow="ellipsis", style=bar.theme.metrics)

    return StatusColumn()


class ProgressBar(RichProgressBar):
    """Rich bar: ``Epoch e`` (``e/last`` when the budget is in epochs), the epoch's optimiser steps, the
    training samples evaluated, samples per second (training time only), the time left to the budget and the
    running training ELBO of this epoch; no bars for the final evaluation. The ELBO is read every
    ``elbo_every`` steps (one host sync each time), not at every refresh. When stdout is not a terminal (a log
    file) the bar is WIDTH columns wide and shows only at the end of each fit, so the same status is printed
    as a plain line every ``print_every_s`` seconds (0 or null: never)."""

    def __init__(self, *args, elbo_every: int = 50, print_every_s: float | None = 60,
                 console_kwargs: dict | None = None, **kwargs):
        import sys

        self.to_terminal = sys.stdout.isatty()
        if not self.to_terminal:  # a log file: one line, as wide as every other line aevb prints
            console_kwargs = {"width": WIDTH, **(console_kwargs or {})}
        super().__init__(*args, console_kwargs=console_kwargs, **kwargs)
        self.elbo_every, self._elbo, self._elbo_step, self._elbo_epoch = elbo_every, None, -1, -1
        self.print_every_s = None if self.to_terminal else print_every_s
        self.pace, self.status, self._printed_at = Pace(), "", None

    def configure_columns(self, trainer: L.Trainer) -> list:
        description, bar, steps = super().configure_columns(trainer)[:3]  # not Lightning's time and it/s columns
        bar.bar_width = 10  # room for the status on one line
        return [description, bar, steps, _status_column(self)]

    def _get_train_description(self, current_epoch: int) -> str:
        max_epochs = self.trainer.max_epochs
        text = f"Epoch {current_epoch}" + (f"/{max_epochs - 1}" if max_epochs is not None and max_epochs > 0 else "")
        return f"{text:{len(self.validation_description)}}"  # as wide as the validation bar's: no flicker

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict:
        step, epoch = trainer.global_step, getattr(trainer, "current_epoch", 0)
        # read again every elbo_every steps, and in a new epoch (the fast path's chunk may be a whole epoch)
        if self._elbo is None or step - self._elbo_step >= self.elbo_every or epoch != self._elbo_epoch:
            meters = getattr(pl_module, "meters", None)
            if meters is not None and "train_elbo" in meters and float(meters["train_elbo"].weight) > 0:
                meter = meters["train_elbo"]
                self._elbo = float(meter.mean_value / meter.weight)  # this rank's batches
                self._elbo_step, self._elbo_epoch = step, epoch
        samples = int(getattr(pl_module, "samples_seen", 0))
        self.status = status_text(samples, self.pace.rate(samples),
                                  self.pace.eta(samples, samples_left(trainer)), self._elbo)
        return {}  # all of it is in the status column

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pace.start(int(getattr(pl_module, "samples_seen", 0)))
        self._printed_at = self.pace.clock()
        super().on_train_start(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self.pace.pause()
        super().on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.pace.resume()
        self._elbo = None  # show the value the validation line just printed
        super().on_validation_end(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int) -> None:
        chunk = getattr(getattr(pl_module, "fast_loop", None), "last_chunk", None)
        # the fast path's "batch" is a chunk of steps: the bar counts steps of the epoch, as its total does
        step_idx = chunk.stop - 1 if chunk is not None else batch_idx
        super().on_train_batch_end(trainer, pl_module, outputs, batch, step_idx)
        if self.print_every_s and self.pace.clock() - self._printed_at >= self.print_every_s:
            self._printed_at = self.pace.clock()
            total = self.train_progress_bar.total if self.train_progress_bar_id is not None else None
            of = f"/{int(total):,}" if total is not None and 0 < total < float("inf") else ""
            print(fit(f"{self._get_train_description(trainer.current_epoch).rstrip()} step {step_idx + 1:,}{of}"
                      f"  {self.status}", self.status), flush=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._elbo = None  # no mean of this epoch before its first step (not the last epoch's)
        self._update_metrics(trainer, pl_module)

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
