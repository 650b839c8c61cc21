"""Figure 2's curves during training (the per-validation console line is aevb.console.ValidationReport)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from aevb.evaluation import eval_mode, mean_elbo


class ElboCurve(L.Callback):
    """Figure 2's curves: train-subset and test ELBO at log-spaced numbers of training samples evaluated.

    Grid points are ``start * 10**(i / points_per_decade)``; when ``samples_seen``
    first reaches one, the model is evaluated (eval mode, no gradient) and a row is
    appended to ``<run dir>/curve.csv`` and sent to the loggers. The grid is a
    function of samples_seen alone, so a resumed run continues the same curve.
    Evaluation runs on rank zero only and touches no collective, so DDP ranks
    simply wait at their next step.
    """

    HEADER = "samples_seen,train_elbo,test_elbo,train_n,test_n\n"

    def __init__(self, points_per_decade: int = 4, start: int = 10_000, filename: str = "curve.csv"):
        from aevb.errors import require

        require(points_per_decade > 0 and start > 0, "callbacks.elbo_curve: points_per_decade and start must be > 0")
        self.points_per_decade, self.start, self.filename = points_per_decade, start, filename
        self.last_evaluated = -1

    def grid_point(self, i: int) -> int:
        return round(self.start * 10 ** (i / self.points_per_decade))

    def next_point(self, samples_seen: int) -> int:
        i = 0
        while self.grid_point(i) <= samples_seen:
            i += 1
        return self.grid_point(i)

    def curve_path(self, trainer: L.Trainer) -> Path:
        """The curve file: ``<run dir>/<filename>``."""
        return Path(trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._next = self.next_point(pl_module.samples_seen)
        self._drop_rows_after(self.curve_path(trainer), pl_module.samples_seen)

    @rank_zero_only
    def _drop_rows_after(self, path: Path, samples_seen: int) -> None:
        """A rerun in the same directory starts its curve afresh; a resumed run keeps the rows it reached."""
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= samples_seen]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.HEADER + "".join(keep))
        tmp.replace(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.samples_seen >= self._next:
            self._evaluate_apart(trainer, pl_module)
            self._next = self.next_point(pl_module.samples_seen)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.samples_seen != self.last_evaluated:
            self._evaluate_apart(trainer, pl_module)

    def _evaluate_apart(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate on forked RNG streams: whether or how often a curve is drawn never changes training."""
        import torch

        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.evaluate(trainer, pl_module)

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with eval_mode(pl_module):
            train, n_train = mean_elbo(pl_module, trainer.datamodule.eval_dataloader("train_eval"), pl_module.device)
            test, n_test = mean_elbo(pl_module, trainer.datamodule.eval_dataloader("test"), pl_module.device)
        self.append_row(trainer, pl_module, (train, test, n_train, n_test),
                        {"curve/train_elbo": train, "curve/test_elbo": test})

    def append_row(self, trainer: L.Trainer, pl_module: L.LightningModule, values: tuple, metrics: dict) -> int:
        """Append the row ``samples_seen,*values`` to the curve file (HEADER first if the file is new; floats
        with 4 decimals) and send ``metrics`` with ``samples_seen`` to the loggers. Returns samples_seen."""
        seen = int(pl_module.samples_seen)
        self.last_evaluated = seen
        path = self.curve_path(trainer)
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write(self.HEADER)
            f.write(",".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in (seen, *values)) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics({**metrics, "samples_seen": seen}, step=trainer.global_step)
        return seen
