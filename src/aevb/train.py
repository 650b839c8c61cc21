"""aevb-train: compose the config, build data + networks + model, train, evaluate, write summary.json."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from aevb.atomic import write_json_atomic
from aevb.cli import CONF_DIR, check_values, fail, find_user_error, preflight, use_shared_mirror
from aevb.errors import AevbError, ConfigError
from aevb.evaluation import REPORTED_SPLITS, UNITS
from aevb.run_lock import LOCK_FILE, RunFolderInUse
from aevb.run_lock import acquire as acquire_run_folder
from aevb.run_lock import release as release_run_folder
from aevb.stop_signals import catch_early_stops
from aevb.wandb_mode import prestart as prestart_wandb
from aevb.wandb_mode import register_resolver

PROG = "aevb-train"
_MAIN_STARTED = time.time()  # reset by main(): the phases of summary.json's timings_s count from there


class Phases:
    """Wall seconds of a run's phases (summary.json ``timings_s``), so the fixed cost of a run beside its
    training can be measured (make bench) and read after any run."""

    def __init__(self, start: float):
        self.last, self.seconds = start, {}

    def done(self, name: str) -> None:
        now = time.time()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self.last, 2)
        self.last = now


def final_evaluation(trainer, model, dm) -> dict:
    """ELBO of the final model on a fixed train subset, val and test, in nats per datapoint: one test pass over
    the three splits' loaders (one Lightning evaluation loop, not three)."""
    splits = [(name, split) for name, split in REPORTED_SPLITS.items() if dm.split_size(split) > 0]
    model.select_eval_splits([split for _, split in splits])
    loaders = [dm.eval_dataloader(split, distributed=True) for _, split in splits]
    results: dict = {}
    for res in trainer.test(model, dataloaders=loaders, verbose=False):
        results.update(res)
    out: dict = {}
    for prefix in REPORTED_SPLITS.keys() - {name for name, _ in splits}:  # no such split (data.val_size=0)
        out.update({f"{prefix}/elbo": None, f"{prefix}/recon": None, f"{prefix}/kl": None, f"{prefix}/n_datapoints": 0})
    for prefix, _ in splits:
        for term in ("elbo", "recon", "kl"):
            out[f"{prefix}/{term}"] = float(results[f"final/{prefix}/{term}"])
        out[f"{prefix}/n_datapoints"] = int(results[f"final/{prefix}/n_datapoints"])  # what the loop saw, all ranks
    model.select_eval_split("test")
    return out


def print_report(summary: dict) -> None:
    print(f"\nFinal ELBO ({UNITS}; {summary['dataset']}, N_z = {summary['latent_dim']},"
          f" after {summary['samples_seen']:,} training samples evaluated):")
    for prefix, label in (("train", "train (fixed subset)"), ("val", "val"), ("test", "test")):
        if summary[prefix + "/elbo"] is None:
            print(f"  {label:<20} none (data.val_size=0: every training image was trained on)")
            continue
        print(f"  {label:<20} ELBO {summary[prefix + '/elbo']:9.2f}  reconstruction {summary[prefix + '/recon']:9.2f}"
              f"  KL {summary[prefix + '/kl']:7.2f}  ({summary[prefix + '/n_datapoints']:,} datapoints)")
    print(f"test ELBO: {summary['test/elbo']:.2f} {UNITS} ({summary['dataset']} test split,"
          f" {summary['test/n_datapoints']:,} datapoints)", flush=True)


def run(cfg: DictConfig) -> dict:
    """One training run; returns the summary that is also written to summary.json."""
    catch_early_stops()  # (a job process of a launcher starts here) a stop signal before training is not fatal
    phases = Phases(_MAIN_STARTED)
    phases.done("start_up")  # interpreter, Hydra composition and pre-flight, up to this job
    prestart_wandb(cfg.get("logger"))  # wandb's import and service start overlap the imports below
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate
    from lightning.pytorch.utilities import rank_zero_only

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from aevb.building import build  # torch loads here: --help and config errors answer without it
    from aevb.checkpoints import best_checkpoint
    from aevb.quiet import quiet_third_party
    from aevb.dashboards import finish as finish_dashboards
    from aevb.dashboards import make_loggers
    from aevb.fast import enable_fast_path
    from aevb.nets.base import count_parameters
    from aevb.no_validation import trainer_overrides, without_validation
    from aevb.packed.coordinator import active_pack
    from aevb.resume import check_resumable
    from aevb.run_control import ContinueLogs, GracefulStop, RunInterrupted, resume_after_requeue, write_status

    phases.done("imports")
    check_values(cfg)
    quiet_third_party()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    acquire_run_folder(out_dir)  # (already held when preflight took it: the folder was named on the command line)
    if rank_zero_only.rank == 0:
        print(f"run folder: {out_dir}", flush=True)
    started = time.time()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm, model = build(cfg)
    dm.setup()
    phases.done("data_and_networks")
    if not dm.has_val and cfg.get("callbacks"):
        without_validation(cfg.callbacks)  # data.val_size=0: checkpoints at epoch ends, nothing monitors val/
    ckpt_path = cfg.get("ckpt_path") or resume_after_requeue(out_dir)
    if ckpt_path:  # before anything in the run folder is written: a wrong checkpoint leaves it as it was
        check_resumable(ckpt_path, model)
        print(f"resuming from {ckpt_path}", flush=True)
        if rank_zero_only.rank == 0:  # a launcher's record of how the earlier attempt ended is no longer true
            (out_dir / "failed.json").unlink(missing_ok=True)
    print(f"parameters: encoder {type(model.encoder).__name__} {count_parameters(model.encoder):,},"
          f" decoder {type(model.decoder).__name__} {count_parameters(model.decoder):,}", flush=True)
    (out_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(model.run_config))  # what checkpoints carry

    loggers = make_loggers(cfg, model.run_config, extra=lambda node: _continue_wandb_run(node, out_dir, ckpt_path))
    # (entries without a _target_ are settings the callbacks read, e.g. callbacks.test_every_n_epochs)
    callbacks = [instantiate(c) for c in cfg.get("callbacks", {}).values() if isinstance(c, DictConfig)]
    if active_pack() is not None:  # members of a pack share one console: no live bars, the epoch lines stay
        callbacks = [c for c in callbacks if "ProgressBar" not in type(c).__name__]
    callbacks += [GracefulStop(), ContinueLogs()]
    _refuse_ddp_in_local_sweep(cfg)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=callbacks, plugins=_plugins(),
                          enable_checkpointing=any(type(c).__name__ == "ModelCheckpoint" for c in callbacks),
                          enable_progress_bar=any("ProgressBar" in type(c).__name__ for c in callbacks),
                          **({"max_epochs": -1} if cfg.get("max_samples") else {}), **trainer_overrides(dm.has_val))
    if cfg.get("max_samples"):
        plan = dm.batch_plan(trainer.world_size)  # the real world size, whatever `devices` said
        trainer.fit_loop.epoch_loop.max_steps = plan.first_step_reaching(int(cfg.max_samples))
        print(f"budget: {int(cfg.max_samples):,} training samples = {trainer.max_steps:,} {plan.describe()}",
              flush=True)
    enable_fast_path(cfg.get("fast"), trainer, model, dm)
    quiet_third_party()  # again: Lightning adds its handlers at import and when the trainer is made
    phases.done("loggers_and_trainer")
    try:
        trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    except RunInterrupted as stop:
        _report_interrupted(out_dir, trainer)
        raise stop
    except SIGTERMException:  # stopped before training started (no checkpoint to write yet)
        raise RunInterrupted(128 + 15) from None
    phases.done("fit")
    model.check_finite("before the final evaluation")
    if trainer.checkpoint_callback is not None:
        # ModelCheckpoint saves at validation; the model the summary describes is the one after fit
        trainer.save_checkpoint(Path(trainer.checkpoint_callback.dirpath) / "last.ckpt")

    summary = final_evaluation(trainer, model, dm)
    phases.done("final_evaluation")
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
        "device": str(trainer.strategy.root_device),  # cuda:0 is the first of cuda_visible_devices
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),  # null: not set, every GPU visible
        **_device_memory(),
        "train_subset_note": "train/* is the final model on a fixed subset of the training split",
    })
    if trainer.is_global_zero:
        write_json_atomic(out_dir / "summary.json", summary)
        write_status(out_dir, {"status": "finished", "step": int(trainer.global_step),
                               "samples_seen": int(model.samples_seen)})
        best = best_checkpoint(trainer, summary["val/elbo"])
        print_report(summary)
        if best:
            print(best, flush=True)
        finish_dashboards(loggers, model, dm, summary, model.run_config, trainer.global_step)
        phases.done("reports_and_dashboards")
        summary["timings_s"] = phases.seconds  # (written first without them: a failing dashboard loses nothing)
        write_json_atomic(out_dir / "summary.json", summary)
    return summary


def _continue_wandb_run(logger_cfg, out_dir: Path, ckpt_path) -> dict:
    """A resumed run continues its wandb run (same id) instead of starting another."""
    if not ckpt_path or "Wandb" not in str(logger_cfg.get("_target_", "")):
        return {}
    runs = sorted((out_dir / "wandb").glob("*run-*-*"), key=lambda p: p.stat().st_mtime)
    return {"id": runs[-1].name.rsplit("-", 1)[-1], "resume": "allow"} if runs else {}


def _plugins() -> list:
    """Atomic checkpoint writes; under SLURM, SIGUSR1 is GracefulStop's (checkpoint, status, requeue),
    not Lightning's own auto-requeue, so there is one resume mechanism."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from aevb.checkpoint_io import AtomicCheckpointIO

    plugins: list = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def _report_interrupted(out_dir: Path, trainer) -> None:
    from aevb.run_control import read_status

    status = read_status(out_dir)
    if trainer.is_global_zero and status.get("status") == "interrupted":
        requeued = f"; SLURM job {status['requeued_slurm_job']} requeued" if status.get("requeued_slurm_job") else ""
        if status.get("at_once"):
            kept = (f"the last checkpoint (step {status['step']:,}, {status['samples_seen']:,} training samples) is"
                    " kept" if status.get("checkpoint") else "no checkpoint had been written yet: it starts over")
            print(f"{PROG}: interrupted by a second SIGINT at once, inside step {status['stopped_at_step']:,};"
                  f" {kept}. Resume with: {status['resume']}", file=sys.stderr, flush=True)
            return
        print(f"{PROG}: interrupted by {status['signal']} at step {status['step']:,}"
              f" ({status['samples_seen']:,} training samples); checkpoint saved{requeued}."
              f" Resume with: {status['resume']}", file=sys.stderr, flush=True)


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
            if not isinstance(user_error, RunFolderInUse):  # the folder is the live run's: leave it as it is
                _clean_up_failed_run(user_error or exc)
            if user_error is None:
                raise
            fail(PROG, str(user_error))
        if os.environ.get("AEVB_TRACEBACK"):
            import traceback
            traceback.print_exc()
        if not isinstance(user_error, RunFolderInUse):
            _record_failure(user_error or exc)
        else:
            print(f"{PROG}: error: job {_job_num()} not run: {user_error}", file=sys.stderr, flush=True)
        return None
    finally:
        if _is_multirun():  # the next job of this process runs in another folder
            release_run_folder(_output_dir())
    return summary["val/elbo"]


def _output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _job_num() -> int:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().job.num


def _clean_up_failed_run(exc: BaseException) -> None:
    """A single run that failed leaves no folder holding only Hydra's own files (it failed before doing
    anything); a folder it did write into gets a status.json that says why, unless it has one already."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    from aevb.run_control import STATUS_FILE

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    if not out_dir.is_dir():
        return
    if all(p.name in (".hydra", LOCK_FILE) or p.suffix == ".log" for p in out_dir.iterdir()):
        shutil.rmtree(out_dir, ignore_errors=True)
    elif not (out_dir / STATUS_FILE).exists():
        message = " ".join(f"{type(exc).__name__}: {exc}".split())[:500]
        write_json_atomic(out_dir / STATUS_FILE, {"status": "failed", "error": message})


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
    global _MAIN_STARTED
    _MAIN_STARTED = time.time()
    catch_early_stops()  # first thing: a stop signal while Python loads and builds is acted on at the first step
    from aevb.quiet import quiet_third_party

    quiet_third_party()
    register_resolver()
    use_shared_mirror()
    try:
        preflight(sys.argv[1:])
    except AevbError as exc:
        fail(PROG, str(exc))
    _hydra_main()  # a sweep with failed jobs exits with status 1 from aevb.sweep.SweepSummary


if __name__ == "__main__":
    main()
