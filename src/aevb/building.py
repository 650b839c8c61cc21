"""Model building: a composed config (and its data) -> (data module, model).

Training, checkpoint loading and the tests all build through ``build``, so shapes
always come from the data module and a checkpoint rebuilds exactly what was trained.
"""

from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from aevb.likelihoods import make_likelihood


def resolved_config(cfg: DictConfig, dm) -> dict:
    """The run's config with every interpolation resolved, and the data mirror really used recorded."""
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["data"]["mirror"] = str(dm.mirror_used) if dm.mirror_used else None
    return resolved


def build(cfg: DictConfig, data_module=None, run_config: dict | None = None):
    """Instantiate (datamodule, model) from a composed config; shapes come from the data.

    ``run_config`` (default: ``resolved_config(cfg, dm)``) is handed to the model, which stores it
    in its checkpoints; ``aevb.checkpoints.load_model`` passes the one a checkpoint carries.
    """
    dm = data_module if data_module is not None else instantiate(cfg.data)
    dm.setup()
    shape, n_train = dm.data_shape, dm.n_train
    likelihood = make_likelihood(cfg.paper.likelihood)
    latent = cfg.model.latent_dim
    encoder = instantiate(cfg.net.encoder, data_shape=shape, latent_dim=latent)
    decoder = instantiate(cfg.net.decoder, data_shape=shape, latent_dim=latent, likelihood=likelihood)
    run_config = run_config if run_config is not None else resolved_config(cfg, dm)
    make_model = instantiate(cfg.model, _partial_=True)  # the objects below are passed as they are, not as config
    model = make_model(encoder=encoder, decoder=decoder, n_train=n_train, run_config=run_config)
    return dm, model
