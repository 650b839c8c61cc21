"""aevb-train: compose the config, build data + networks + model, train, evaluate, write summary.json."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aevb.cli import CONF_DIR, check_values, fail, find_user_error, preflight
from aevb.errors import AevbError, ConfigError
from aevb.wandb_mode import register_resolver

PROG = "aevb-train"
UNITS = "nats per datapoint"
FINAL_SPLITS = (("train", "train_eval"), ("val", "val"), ("test", "test"))


def build(cfg: DictConfig, data_module=None):
    """Instantiate (datamodule, model) from a composed config; shapes come from the data."""
    from hydra.utils import instantiate

    from aevb.likelihoods import make_likelihood

    dm = data_module if data_module is not None else instantiate(cfg.data)
    dm.setup()
    shape, n_train = dm.data_shape, dm.n_train
    likelihood = make_likelihood(cfg.data.likelihood)
    latent = cfg.model.latent_dim
    encoder = instantiate(cfg.net.encoder, data_shape=shape, latent_dim=latent)
    decoder = instantiate(cfg.net.decoder, data_shape=shape, latent_dim=latent, likelihood=likelihood)
    model = instantiate(cfg.model, encoder=encoder, decoder=decoder, n_train=n_train)
    return dm, model


def final_evaluation(trainer, model, dm) -> dict:
    """ELBO of the final model on a fixed train subset, val and test, in nats per datapoint."""
    out: dict = {}
    for prefix, split in FINAL_SPLITS:
        model.eval_split = split
        res = trainer.test(model, dataloaders=dm.eval_dataloader(split, distributed=True), verbose=False)[0]
        for term in ("elbo", "recon", "kl"):
            out[f"{prefix}/{term}"] = float(res[f"{prefix}/{term}"])
        out[f"{prefix}/n_datapoints"] = dm.split_size(split)
    model.eval_split = "test"
    return out


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def print_report(summary: dict) -> None:
    print(f"\nFinal ELBO ({UNITS}; {summary['dataset']}, N_z = {summary['latent_dim']},"
          f" after {summary['samples_seen']:,} training samples evaluated):")
    for prefix, label in (("train", "train (fixed subset)"), ("val", "val"), ("test", "test")):
        print(f"  {label:<22} ELBO {summary[prefix + '/elbo']:10.2f}   reconstruction {summary[prefix + '/recon']:10.2f}"
              f"   KL {summary[prefix + '/kl']:8.2f}   ({summary[prefix + '/n_datapoints']:,} datapoints)")
    print(f"test ELBO: {summary['test/elbo']:.2f} {UNITS} ({summary['dataset']} test split,"
          f" {summary['test/n_datapoints']:,} datapoints)", flush=True)


def run(cfg: DictConfig) -> dict:
    """One training run; returns the summary that is also written to summary.json."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    from aevb.fast import enable_fast_path
    from aevb.nets.base import count_parameters

    check_values(cfg)
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm, model = build(cfg)
    print(f"parameters: encoder {type(model.encoder).__name__} {count_parameters(model.encoder):,},"
          f" decoder {type(model.decoder).__name__} {count_parameters(model.decoder):,}", flush=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    resolved["data"]["mirror"] = str(dm.mirror_used) if dm.mirror_used else None  # where the data really came from
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(resolved))
    model.run_config = resolved

    loggers = [instantiate(c) for c in cfg.get("logger", {}).values() if c is not None]
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None]
    _refuse_ddp_in_local_sweep(cfg)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks,
                          enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
                          enable_progress_bar=any("ProgressBar" in type(c).__name__ for c in callbacks),
                          **({"max_epochs": -1} if cfg.get("max_samples") else {}))
    if cfg.get("max_samples"):
        per_step = dm.batch_size * trainer.world_size  # the real world size, whatever `devices` said
        trainer.fit_loop.epoch_loop.max_steps = math.ceil(int(cfg.max_samples) / per_step)
        print(f"budget: {int(cfg.max_samples):,} training samples = {trainer.max_steps:,} steps of {per_step}",
              flush=True)
    enable_fast_path(cfg.get("fast"), trainer, model, dm)
    trainer.fit(model, datamodule=dm, ckpt_path=cfg.get("ckpt_path"))
    if trainer.checkpoint_callback is not None:
        # ModelCheckpoint saves at validation; the model the summary describes is the one after fit
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")

    summary = final_evaluation(trainer, model, dm)
    summary.update({
        "samples_seen": int(model.samples_seen),
        "units": UNITS,
        "dataset": dm.name,
        "latent_dim": int(cfg.model.latent_dim),
        "model": type(model).__name__,
        "backbone": f"{type(model.encoder).__name__} / {type(model.decoder).__name__}",
        "global_step": int(trainer.global_step),
        "epochs": int(trainer.current_epoch),
        "wall_time_s": round(time.time() - started, 1),
        **_device_memory(),
        "train_subset_note": "train/* is the final model on a fixed subset of the training split",
    })
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "summary.json", summary)
        print_report(summary)
        _log_images(loggers, model, dm, summary)
        _wandb_hint(loggers)
    return summary


def _device_memory() -> dict:
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"peak_device_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1)}


def _refuse_ddp_in_local_sweep(cfg: DictConfig) -> None:
    """Lightning starts DDP ranks by re-running the command line; inside a local multirun each rank
    would start the whole sweep again. Under SLURM (or torchrun) the ranks already exist."""
    strategy = str(cfg.trainer.get("strategy") or "")
    launched = any(os.environ.get(v) for v in ("SLURM_NTASKS", "LOCAL_RANK", "WORLD_SIZE"))
    if "ddp" in strategy and _is_multirun() and not launched:
        raise ConfigError("trainer=ddp inside a sweep needs hydra/launcher=slurm with"
                          " hydra.launcher.tasks_per_node=<trainer.devices>; locally, sweep with one device per job")


def _log_images(loggers, model, dm, summary: dict) -> None:
    """Samples, test reconstructions and (N_z = 2) the manifold, as the figures show them, to wandb."""
    wandb_loggers = [lg for lg in loggers if type(lg).__name__ == "WandbLogger"]
    if not wandb_loggers:
        return
    from aevb.figures import manifold_grid, reconstruction_grid, sample_grid

    note = f"{dm.name}, N_z = {summary['latent_dim']}, after {summary['samples_seen']:,} training samples"
    images = {"samples": (sample_grid(model, 100, seed=0), f"100 samples E[x|z], z ~ N(0, I); {note}"),
              "reconstructions": (reconstruction_grid(model, dm.splits["test"], 10),
                                  f"top: test images, bottom: reconstructions; {note}")}
    if model.encoder.latent_shape == (2,):
        images["manifold"] = (manifold_grid(model, 20), f"learned 2-D manifold (Figure 4); {note}")
    for lg in wandb_loggers:
        for key, (array, caption) in images.items():
            lg.log_image(key=f"images/{key}", images=[array], caption=[caption])


def _wandb_hint(loggers) -> None:
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger" and getattr(lg, "_offline", False):
            run_dir = Path(lg.experiment.dir).parent
            lg.experiment.finish()
            print(f"wandb: offline run saved in {run_dir}; upload it with `wandb sync {run_dir}`", flush=True)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> float | None:
    try:
        summary = run(cfg)
    except Exception as exc:  # in a sweep, one job's crash must not lose the others' results
        user_error = find_user_error(exc)
        if not _is_multirun():
            if user_error is None:
                raise
            fail(PROG, str(user_error))
        _record_failure(user_error or exc)
        return None
    return summary["val/elbo"]


def _record_failure(exc: Exception) -> None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    root = exc
    while root.__cause__ is not None:  # Hydra's InstantiationException says little; its cause says what
        root = root.__cause__
    message = " ".join(f"{type(root).__name__}: {root}".split())[:500]
    write_json_atomic(out_dir / "failed.json", {"status": "failed", "error": message})
    print(f"{PROG}: error: job {HydraConfig.get().job.num} failed: {message}", file=sys.stderr, flush=True)


def main() -> None:
    register_resolver()
    try:
        preflight(sys.argv[1:])
    except AevbError as exc:
        fail(PROG, str(exc))
    _hydra_main()
    from aevb.sweep import FAILED_JOBS

    if FAILED_JOBS:  # the other jobs' results are kept; the exit status still says not all is well
        print(f"{PROG}: error: {len(FAILED_JOBS)} sweep job(s) failed: {', '.join(FAILED_JOBS)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
