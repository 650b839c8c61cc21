"""What a run sends to wandb and TensorBoard besides the metrics: who it is, its config, pictures, final numbers.

* identity: a run name and tags built from what varies in its sweep (``aevb Nz=20 seed=0``), the
  sweep as the wandb group, the training method as the job type;
* the whole resolved config, with the package version and the git commit;
* at the end: samples, test reconstructions and (N_z = 2) the manifold as uint8 images with
  captions, the final summary (summary.json's keys) as the wandb run summary, and for TensorBoard
  the flattened config as hparams with ``hp_metric`` = the final test ELBO.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from omegaconf import DictConfig

# short names for the overrides that usually vary in a sweep; others keep their own name
SHORT = {"model.latent_dim": "Nz", "data.train_size": "N_train", "model.optimizer.lr": "lr",
         "model/optimizer": "opt", "model.n_samples": "L", "max_samples": "samples"}


def sweep_overrides(hc) -> list[tuple[str, str]]:
    """(key, value) of this job's overrides whose key takes several values in its sweep (none for a single run).

    The sweep's keys come from ``hydra.sweeper.params`` (an experiment's sweep) and from the command line
    that Hydra records in ``<sweep dir>/multirun.yaml``; the values from this job's own overrides.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    if hc.mode != RunMode.MULTIRUN:
        return []
    parser = OverridesParser.create()
    sweep = [f"{k}={v}" for k, v in (hc.sweeper.get("params") or {}).items()]
    record = Path(hc.sweep.dir) / "multirun.yaml"
    if record.is_file():
        sweep += list(OmegaConf.load(record).hydra.overrides.task)
    varying = {o.key_or_group for o in parser.parse_overrides(sweep) if o.is_sweep_override()}
    job = parser.parse_overrides(list(hc.overrides.task))
    return [(o.key_or_group, str(o.value())) for o in job if o.key_or_group in varying]


def run_identity(cfg: DictConfig) -> dict:
    """wandb name, tags, group and job type of this run."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    method = hc.runtime.choices.get("model") or cfg.model._target_.rsplit(".", 1)[-1].lower()
    varying = [(k, v) for k, v in sweep_overrides(hc) if k not in ("model", "model.latent_dim", "seed")]
    parts = [f"{SHORT.get(k, k)}={v}" for k, v in varying]
    name = " ".join([method, f"Nz={cfg.model.latent_dim}", *parts, f"seed={cfg.seed}"])
    group = cfg.get("group")
    if group is None and hc.mode == RunMode.MULTIRUN:
        sweep_dir = Path(hc.sweep.dir)
        group = f"{sweep_dir.parent.name}/{sweep_dir.name}"
    tags = [method, hc.runtime.choices.get("data") or "", f"Nz={cfg.model.latent_dim}", *parts]
    return {"name": name, "group": group, "job_type": method, "tags": [t[:64] for t in dict.fromkeys(tags) if t]}


def provenance() -> dict:
    """The package version and, when the code runs from a git checkout, its commit (``+dirty`` if modified)."""
    import aevb

    info = {"version": aevb.__version__, "git_commit": None}
    repo = Path(aevb.__file__).resolve().parents[2]
    if (repo / ".git").exists():
        try:
            git = ["git", "-C", str(repo)]
            commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
            dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10)
            if commit.returncode == 0:
                info["git_commit"] = commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return info


def make_loggers(cfg: DictConfig, resolved: dict, extra=lambda node: {}) -> list:
    """Instantiate ``cfg.logger``; wandb loggers get the identity and the whole resolved config unless the
    config sets them itself. ``extra(node)`` adds keyword arguments (a resumed run's wandb id)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    extra_for, loggers = extra, []
    for node in (c for c in cfg.get("logger", {}).values() if c is not None):
        extra = {}
        if node.get("_target_", "").endswith("WandbLogger"):
            ident = run_identity(cfg)
            method = ident["job_type"]
            run = {"method": method, "dataset": HydraConfig.get().runtime.choices.get("data"),
                   "optimizer": cfg.model.optimizer._target_.rsplit(".", 1)[-1], "lr": cfg.model.optimizer.get("lr"),
                   "backbone": f"{cfg.net.encoder._target_.rsplit('.', 1)[-1]} / "
                               f"{cfg.net.decoder._target_.rsplit('.', 1)[-1]}",
                   "budget": (f"max_samples={cfg.max_samples}" if cfg.get("max_samples")
                              else f"max_epochs={cfg.trainer.get('max_epochs')}"),
                   "overrides": list(HydraConfig.get().overrides.task), **provenance()}
            extra = {k: v for k, v in ident.items() if node.get(k) is None}
            extra["config"] = {**resolved, "run": run}
        loggers.append(instantiate(node, _partial_=True)(**extra, **extra_for(node)))  # partial: "config" is instantiate's own argument
    return loggers


def to_uint8(grid):
    """A [0, 1] image grid as uint8 0..255, the range wandb and TensorBoard expect of integer images."""
    import numpy as np

    return np.round(np.clip(grid, 0.0, 1.0) * 255.0).astype(np.uint8)


def pictures(model, dm, summary: dict) -> dict:
    """{name: (uint8 grid, caption)}: the figures' samples, reconstructions and (N_z = 2) manifold."""
    from aevb.pictures import manifold_grid, reconstruction_grid, sample_grid

    note = f"{dm.name}, N_z = {summary['latent_dim']}, after {summary['samples_seen']:,} training samples"
    images = {"samples": (sample_grid(model, 100, seed=0), f"100 samples E[x|z], z ~ N(0, I); {note}"),
              "reconstructions": (reconstruction_grid(model, dm.splits["test"], 10),
                                  f"top: test images, bottom: reconstructions; {note}")}
    if model.encoder.latent_shape == (2,):
        images["manifold"] = (manifold_grid(model, 20), f"learned 2-D manifold (Figure 4); {note}")
    return {key: (to_uint8(grid), caption) for key, (grid, caption) in images.items()}


def finish(loggers, model, dm, summary: dict, resolved: dict, step: int) -> None:
    """Rank zero, after summary.json: pictures, final summary and hparams to the dashboards; close them."""
    kinds = {type(lg).__name__ for lg in loggers}
    if not kinds & {"WandbLogger", "TensorBoardLogger"}:
        return
    images = pictures(model, dm, summary)
    for lg in loggers:
        if type(lg).__name__ == "WandbLogger":
            _finish_wandb(lg, images, summary, step)
        elif type(lg).__name__ == "TensorBoardLogger":
            _finish_tensorboard(lg, images, summary, resolved, step)


def _finish_wandb(lg, images: dict, summary: dict, step: int) -> None:
    import wandb

    run = lg.experiment
    run.log({**{f"images/{k}": wandb.Image(a, caption=c) for k, (a, c) in images.items()},
             "samples_seen": summary["samples_seen"], "trainer/global_step": step})
    run.summary.update(summary)
    offline = getattr(lg, "_offline", False)
    run_dir = Path(run.dir).parent
    url = None if offline else run.url
    run.finish()
    if offline:
        print(f"wandb: offline run saved; upload it with:\n  wandb sync {run_dir}", flush=True)  # (paths are long)
    elif url:
        print(f"wandb: {url}", flush=True)


def _finish_tensorboard(lg, images: dict, summary: dict, resolved: dict, step: int) -> None:
    writer = lg.experiment
    for key, (array, caption) in images.items():
        writer.add_image(f"images/{key}", array, step, dataformats="HW")
        writer.add_text(f"images/{key}", caption, step)
    lg.log_hyperparams(resolved, metrics={"hp_metric": summary["test/elbo"]}, step=step)
    if hasattr(lg, "close"):
        lg.close()
    print(f"tensorboard: {lg.log_dir} (`tensorboard --logdir {lg.log_dir}`)", flush=True)
