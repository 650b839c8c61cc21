"""Curves written during training: Figure 2's (``ElboCurve``) and the test ELBO every N epochs
(``ScheduledTestElbo``). The per-validation console line is aevb.console.ValidationReport."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities import rank_zero_only

from aevb.evaluation import eval_mode, mean_elbo


class CurveFile(L.Callback):
    """A CSV curve in the run folder, evaluated apart from training: rows keyed by ``samples_seen``, kept by
    a resumed run up to its checkpoint, each row also sent to the loggers. Subclasses say when to evaluate."""

    HEADER = ""

    def __init__(self, filename: str):
        self.filename = filename
        self.last_evaluated = -1

    def curve_path(self, trainer: L.Trainer) -> Path:
        """The curve file: ``<run dir>/<filename>``."""
        return Path(trainer.default_root_dir) / self.filename

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._drop_rows_after(self.curve_path(trainer), pl_module.samples_seen)

    @rank_zero_only
    def _drop_rows_after(self, path: Path, samples_seen: int) -> None:
        """A rerun in the same directory starts its curve afresh; a resumed run keeps the rows it reached."""
        if not path.exists():
            return
        lines = path.read_text().splitlines(keepends=True)
        keep = [ln for ln in lines[1:] if ln.strip() and int(ln.split(",", 1)[0]) <= samples_seen]
        if keep:  # (a run resumed where a row was written does not write it twice)
            self.last_evaluated = int(keep[-1].split(",", 1)[0])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(self.HEADER + "".join(keep))
        tmp.replace(path)

    def _evaluate_apart(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Evaluate on forked RNG streams: whether or how often a curve is drawn never changes training."""
        import torch

        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            self.evaluate(trainer, pl_module)

    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        raise NotImplementedError

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


class ElboCurve(CurveFile):
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
        super().__init__(filename)
        self.points_per_decade, self.start = points_per_decade, start

    def grid_point(self, i: int) -> int:
        return round(self.start * 10 ** (i / self.points_per_decade))

    def next_point(self, samples_seen: int) -> int:
        i = 0
        while self.grid_point(i) <= samples_seen:
            i += 1
        return self.grid_point(i)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._next = self.next_point(pl_module.samples_seen)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.samples_seen >= self._next:
            self._evaluate_apart(trainer, pl_module)
            self._next = self.next_point(pl_module.samples_seen)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.samples_seen != self.last_evaluated:
            self._evaluate_apart(trainer, pl_module)

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with eval_mode(pl_module):
            train, n_train = mean_elbo(pl_module, trainer.datamodule.eval_dataloader("train_eval"), pl_module.device)
            test, n_test = mean_elbo(pl_module, trainer.datamodule.eval_dataloader("test"), pl_module.device)
        self.append_row(trainer, pl_module, (train, test, n_train, n_test),
                        {"curve/train_elbo": train, "curve/test_elbo": test})


class ScheduledTestElbo(CurveFile):
    """The test ELBO after every ``every_n_epochs``-th epoch (0: never), as pytorch/examples' VAE prints it:
    a row ``samples_seen,epoch,test_elbo,test_n`` in ``test_curve.csv`` and ``test/elbo`` (with ``epoch``)
    in the loggers. Evaluated on rank zero, on forked RNG streams, so it changes no training number."""

    HEADER = "samples_seen,epoch,test_elbo,test_n\n"

    def __init__(self, every_n_epochs: int = 0, filename: str = "test_curve.csv"):
        from aevb.errors import require

        require(isinstance(every_n_epochs, int) and not isinstance(every_n_epochs, bool) and every_n_epochs >= 0,
                f"callbacks.test_every_n_epochs must be a whole number >= 0 (0: never), got {every_n_epochs!r}")
        super().__init__(filename)
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a whole epoch ends here (not a budget reached inside one: the final evaluation reports that point)
        per_epoch = trainer.datamodule.batch_plan(trainer.world_size).samples_per_epoch
        seen = int(pl_module.samples_seen)
        if not self.every_n_epochs or seen == 0 or seen % per_epoch or seen == self.last_evaluated:
            return
        if (seen // per_epoch) % self.every_n_epochs == 0:
            self._evaluate_apart(trainer, pl_module)

    @rank_zero_only
    def evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with eval_mode(pl_module):
            test, n_test = mean_elbo(pl_module, trainer.datamodule.eval_dataloader("test"), pl_module.device)
        per_epoch = trainer.datamodule.batch_plan(trainer.world_size).samples_per_epoch
        epoch = int(pl_module.samples_seen) // per_epoch  # epochs completed
        self.append_row(trainer, pl_module, (epoch, test, n_test), {"test/elbo": test, "epoch": epoch})
