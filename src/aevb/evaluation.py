"""The evaluation protocol every training method, callback, CLI and figure shares.

* ``UNITS``: every ELBO and log p(x) the project reports is per datapoint, in nats.
* ``REPORTED_SPLITS``: reported name -> data split evaluated ("train" is the final model
  on a fixed training subset, ``train_eval``, not the running training mean).
* ``eval_mode``: evaluate in eval mode and leave the module in the mode it came in, even on error.
* ``mean_elbo``: the mean ELBO over a loader, with one host sync per call.
"""

from __future__ import annotations

import contextlib

UNITS = "nats per datapoint"
REPORTED_SPLITS = {"train": "train_eval", "val": "val", "test": "test"}


@contextlib.contextmanager
def eval_mode(module):
    """``module.eval()`` inside the block; its former train/eval mode restored on leaving (``finally``)."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


def mean_elbo(model, loader, device=None) -> tuple[float, int]:
    """Mean ELBO (nats per datapoint) of ``model.elbo_terms`` over ``loader`` and the number of datapoints.

    No gradient; the caller chooses the mode (see ``eval_mode``). ``device``: where batches go
    (default: the model's). Sums in float64 on the device; one host sync at the end.
    """
    import torch  # here, not at the top: aevb-train's config errors answer without loading torch

    device = torch.device(device) if device is not None else next(model.parameters()).device
    total, n = torch.zeros((), dtype=torch.float64, device=device), 0
    with torch.no_grad():
        for x in loader:
            x = x.to(device)
            total += model.elbo_terms(x).elbo.double().sum()
            n += len(x)
    return float(total) / n, n
