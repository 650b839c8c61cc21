"""Plain-text progress a researcher can read in a log: one line per validation, with units."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_only


class EpochReport(L.Callback):
    """Prints ``epoch | training samples evaluated | train and val ELBO (nats per datapoint)``."""

    @rank_zero_only
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        m = trainer.callback_metrics
        val = m.get("val/elbo")
        if val is None:
            return
        train = m.get("train/elbo")
        n_val = trainer.datamodule.split_size("val") if trainer.datamodule is not None else "?"
        train_txt = f" | train ELBO {float(train):9.2f} (running mean, previous epoch)" if train is not None else ""
        print(
            f"epoch {trainer.current_epoch:>4} | {getattr(pl_module, 'samples_seen', 0):>12,} training samples"
            f" | val ELBO {float(val):9.2f} nats/datapoint ({n_val:,} val images){train_txt}",
            flush=True,
        )
