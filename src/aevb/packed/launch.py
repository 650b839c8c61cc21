"""hydra/launcher=packed: which jobs of a sweep share a pack, and a pack's process.

Jobs share a pack when their configs differ only in values that change no shape of the
training program (the seed, the learning rate, the initialisation, the data order's seed)
or in the latent size where the backbone pads it exactly (aevb.packed.steps), and when they
train on the fast path with one device: the same data set, backbone, optimiser, method (AEVB
or wake-sleep) and budget. Every other job is a pack of one and runs as under any launcher.
"""

from __future__ import annotations

import json
import threading
from typing import Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

# (dotted key) values that change no shape of the program: members may differ in them
FREE_KEYS = ("seed", "group", "data.seed", "model.optimizer.lr", "model.init", "model.init_std")
LATENT_KEY = "model.latent_dim"


def why_alone(cfg: DictConfig) -> str | None:
    """Why this job cannot share a pack, or None."""
    from hydra.utils import get_class

    if not cfg.get("fast", {}).get("enabled", False):
        return "fast.enabled=false"
    if cfg.get("ckpt_path"):
        return "it resumes from a checkpoint"
    if cfg.model.get("phases", "sequential") != "sequential":
        return f"model.phases={cfg.model.phases} runs on the standard loop"
    trainer = cfg.trainer
    if "ddp" in str(trainer.get("strategy") or "") or str(trainer.get("devices", 1)) not in ("1", "auto"):
        return "it trains on several devices"
    model = get_class(cfg.model._target_)
    if not hasattr(model, "training_loss") and not hasattr(model, "wake_terms"):
        return f"{cfg.model._target_.rsplit('.', 1)[-1]} is neither AEVB nor wake-sleep (the methods packs run)"
    return None


def pack_key(cfg: DictConfig) -> str:
    """Jobs with equal keys may share a pack: the config without Hydra's part and the free keys."""
    from hydra.utils import get_class

    plain = OmegaConf.to_container(cfg, resolve=False)
    plain.pop("hydra", None)
    free = list(FREE_KEYS)
    nets = [get_class(cfg.net.encoder._target_), get_class(cfg.net.decoder._target_)]
    if all(getattr(n, "latent_padding_exact", False) for n in nets):
        free.append(LATENT_KEY)
    for dotted in free:
        *path, last = dotted.split(".")
        node = plain
        for part in path:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return json.dumps(plain, sort_keys=True, default=str)


def plan_packs(configs: Sequence[DictConfig], max_pack: int) -> tuple[list[list[int]], dict[int, str]]:
    """Job positions grouped into packs of at most ``max_pack`` (in sweep order), and why lone jobs are alone."""
    groups: dict[str, list[int]] = {}
    units: list[list[int]] = []
    alone: dict[int, str] = {}
    for pos, cfg in enumerate(configs):
        reason = why_alone(cfg)
        if reason is not None:
            alone[pos] = reason
            units.append([pos])
            continue
        groups.setdefault(pack_key(cfg), []).append(pos)
    for members in groups.values():
        units += [members[i:i + max_pack] for i in range(0, len(members), max_pack)]
    return sorted(units), alone


def job_configs(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[DictConfig]:
    loader = launcher.hydra_context.config_loader
    out = []
    for pos, overrides in enumerate(job_overrides):
        cfg = loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(cfg):
            cfg.hydra.job.num = initial_job_idx + pos
        out.append(cfg)
    return out


def run_pack(jobs, hydra_context, config, task_function, singleton_state) -> list:
    """In a pack's process: every job a thread running its normal Hydra job; their steps run together."""
    from hydra_plugins.hydra_joblib_launcher._core import execute_job

    from aevb.packed.coordinator import Pack, activated
    from aevb.run_control import RunInterrupted, dispatch_to_threads

    pack = Pack(len(jobs), pad_latents=config.hydra.launcher.get("pad_latents", "auto"))
    results: list = [None] * len(jobs)
    stops: list = []  # RunInterrupted of members stopped by a signal (each saved its checkpoint and status.json)

    def member(i: int, idx: int, overrides) -> None:
        try:
            results[i] = pack.run_member(i, lambda: execute_job(idx, overrides, hydra_context, config, task_function,
                                                                singleton_state))
        except RunInterrupted as stop:
            stops.append(stop)

    with activated(pack):
        dispatch_to_threads()  # stop signals reach every member's run
        threads = [threading.Thread(target=member, args=(i, idx, ov), name=f"pack-member-{idx}")
                   for i, (idx, ov) in enumerate(jobs)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    print(pack_line([idx for idx, _ in jobs], pack.steps_together, pack.steps_alone), flush=True)
    if stops:  # as an interrupted single job: the process ends with 128 + the signal, the launcher records it
        raise stops[0]
    if any(r is None for r in results):  # a member's thread died outside its job (its error is printed above)
        raise SystemExit(1)
    return results


def job_list(ids: Sequence[int]) -> str:
    """Job numbers with runs of three or more consecutive ones as ranges: [0, 1, 2, 3, 7, 8] -> "0-3, 7, 8"."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)


def pack_line(ids: Sequence[int], together: int, alone: int) -> str:
    """What a pack's process says when its jobs are done: which jobs trained together, and how many of their
    training steps actually ran side by side (steps run at the same time as another job's, in one program)."""
    import textwrap

    total = together + alone
    how = (f"{together:,} of their {total:,} training steps ran side by side" if together else
           "none of their training steps could run side by side (each job ran its steps alone)")
    return textwrap.fill(f"jobs {job_list(ids)} trained together in one process: {how}", width=100,
                         subsequent_indent="  ")
