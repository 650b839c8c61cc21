"""Shared by the console entry points: one-line errors and a pre-flight check of Hydra overrides.

Hydra reports a bad group option as a multi-line message, and an exception in
the task as a traceback. ``preflight`` composes every job's config the way
Hydra will, before anything is launched, and turns composition errors into a
single ``error:`` line; ``fail`` prints such a line and exits.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import NoReturn

from omegaconf import DictConfig

from aevb.activations import check_activation
from aevb.errors import AevbError, ConfigError, require, require_positive_int

CONF_DIR = Path(os.environ.get("AEVB_CONF_DIR", Path(__file__).resolve().parents[2] / "conf"))
EXIT_USER_ERROR = 2


CHECKOUT = Path(__file__).resolve().parents[2]  # the clone aevb is installed from (editable install)
MIRROR_ENV = "AEVB_DATA_MIRROR"  # (aevb.data.sources reads it; named here to keep this module light)


def use_shared_mirror() -> None:
    """The Makefile's rule, for aevb-train and aevb-eval run by hand: with $AEVB_DATA_MIRROR unset, a
    ``../shared/data`` beside the clone that holds ``mnist/`` is the mirror (data.mirror= still wins)."""
    shared = CHECKOUT.parent / "shared" / "data"
    if not os.environ.get(MIRROR_ENV) and (shared / "mnist").is_dir():
        os.environ[MIRROR_ENV] = str(shared)


def fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USER_ERROR)


def find_user_error(exc: BaseException) -> AevbError | None:
    """The AevbError behind ``exc``, if any (Hydra's instantiate wraps exceptions in its own)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AevbError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def condense(text: str, cause: str = "") -> str:
    """Turn Hydra's multi-line composition error (and its cause) into one line."""
    unknown_key = re.search(r"Could not override '([^']+)'", text)
    if unknown_key and "not in struct" in cause:
        key = unknown_key.group(1)
        return f"unknown config key '{key}' (to add a new key on purpose, write +{key}=...)"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    m = re.search(r"Could not find '([^']+)'", text)
    options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", text)
    if m and options:
        group, name = m.group(1).rsplit("/", 1) if "/" in m.group(1) else ("", m.group(1))
        choices = ", ".join(o.strip() for o in options.group(2).splitlines() if o.strip())
        return f"unknown option '{name}' for config group '{group}' (choose from: {choices})"
    if m:
        return f"config '{m.group(1)}' not found"
    keep = [ln for ln in lines if not ln.startswith(("Config search path", "provider=", "Set the environment", "To append"))]
    keep += [ln.strip() for ln in cause.splitlines()[:1] if ln.strip()]
    return " ".join(keep[:3]) if keep else text.strip()


def check_values(cfg: DictConfig) -> None:
    """Checks that need no data: fail before any work with the config key in the message."""
    if "data" not in cfg or "_target_" not in cfg.data:
        raise ConfigError("no dataset selected (use data=mnist, data=frey_face, data=image_folder or data=array)")
    require_positive_int("model.latent_dim", cfg.model.get("latent_dim"))
    for side in ("encoder", "decoder"):
        for key, value in cfg.net[side].items():
            if key.endswith(("_dim", "_channels")) and isinstance(value, int):
                require_positive_int(f"net.{side}.{key}", value)
            if key == "activation":
                check_activation(f"net.{side}.activation", value)
    if cfg.get("max_samples") is not None:
        n = cfg.max_samples
        integral = isinstance(n, int) or (isinstance(n, float) and n.is_integer())
        require(integral and not isinstance(n, bool) and n > 0,
                f"max_samples must be a positive whole number of training samples, got {n!r}")
    lr = cfg.model.get("optimizer", {}).get("lr")
    if lr is not None:
        require(isinstance(lr, (int, float)) and not isinstance(lr, bool) and lr > 0,
                f"model.optimizer.lr must be a positive number, got {lr!r} (a step size <= 0 learns nothing)")
    if cfg.get("ckpt_path"):
        require(Path(str(cfg.ckpt_path)).is_file(), f"ckpt_path {cfg.ckpt_path} does not exist")

    every = (cfg.get("callbacks") or {}).get("test_every_n_epochs", 0)
    require(isinstance(every, int) and not isinstance(every, bool) and every >= 0,
            f"callbacks.test_every_n_epochs must be a whole number >= 0 (0: never), got {every!r}")
    check_accelerator(cfg.get("trainer") or {})
    fast = cfg.get("fast") or {}
    steps, compile = fast.get("steps_per_call", 1), str(fast.get("compile", "auto")).lower()
    require(isinstance(steps, int) and not isinstance(steps, bool) and steps > 0,
            f"fast.steps_per_call must be a positive integer, got {steps}")
    require(compile in ("auto", "true", "false"), f"fast.compile must be one of auto, true, false, got '{compile}'")
    for key in ("cuda_graph", "self_check"):
        require(isinstance(fast.get(key, True), bool), f"fast.{key} must be true or false, got {fast.get(key)!r}")


def check_accelerator(trainer_cfg) -> None:
    """trainer=gpu / ddp need as many visible GPUs as trainer.devices asks for (Lightning would raise a traceback)."""
    if str(trainer_cfg.get("accelerator", "")).lower() not in ("gpu", "cuda"):
        return
    import torch

    found = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if found == 0 and torch.backends.mps.is_available():
        found = 1
    devices = trainer_cfg.get("devices", 1)
    if isinstance(devices, int) and not isinstance(devices, bool):
        wanted = max(devices, 1)  # -1: all of them, at least one
    elif isinstance(devices, str):
        wanted = 1 if devices == "auto" or devices.strip() == "-1" else len([d for d in devices.split(",") if d.strip()])
    else:  # a list of device indices
        wanted = len(devices)
    require(found >= wanted, f"trainer.accelerator=gpu needs {wanted} GPU(s) but {found} {'is' if found == 1 else 'are'}"
            " visible (torch.cuda.device_count()); use trainer=cpu, or check CUDA_VISIBLE_DEVICES and the driver")


def check_output_dir(path: Path, key: str) -> None:
    """The run (or sweep) folder must be creatable and writable; checked without creating anything."""
    path = Path(path).absolute()
    probe = path
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"{key}={path} cannot be created: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={path} cannot be written: no write permission on {probe}")


def check_fresh_sweep_dir(path: Path) -> None:
    """A new sweep never merges into an old one's folder (its report would count the old jobs)."""
    path = Path(path)
    if not path.is_dir():
        return
    old = [p.name for p in path.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    if old or (path / "results.md").exists():
        raise ConfigError(f"hydra.sweep.dir={path} already holds a sweep ({len(old)} job folders); move it away,"
                          " delete it, or choose another hydra.sweep.dir (make: SWEEPS=<folder>)")


def _check_resume_before_hydra(cfg: DictConfig) -> None:
    """A checkpoint that does not fit the config is refused before Hydra writes anything into the run folder."""

    from aevb.resume import check_resumable
    from aevb.wandb_mode import register_resolver

    register_resolver()
    resolvable = cfg.copy()
    resolvable.paths.output_dir = "unused"  # ${hydra:runtime.output_dir} does not exist before the run
    from aevb.building import build

    _, model = build(resolvable)
    check_resumable(cfg.ckpt_path, model)


VALUE_FLAGS = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg", "-p", "--package"}


def preflight(argv: list[str], config_name: str = "train") -> None:
    """Compose the config of every job ``argv`` describes; raise ConfigError with one line if any fails."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides, multirun, skip = [], False, False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
        elif arg in ("-m", "--multirun"):
            multirun = True
        elif arg in VALUE_FLAGS:
            if arg in ("-cn", "--config-name") and i + 1 < len(argv):
                config_name = argv[i + 1]
            skip = True
        elif arg.startswith("-"):
            return  # --help, --info, ...: Hydra's own business
        else:
            overrides.append(arg)
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
        if not multirun and any(o.is_sweep_override() for o in parsed):
            raise ConfigError("sweep values (a,b,...) need --multirun (-m)")
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3", job_name="preflight"):
            for job in jobs:
                check_values(compose(config_name, overrides=job))
            hydra_cfg = compose(config_name, overrides=jobs[0] if jobs else [], return_hydra_config=True).hydra
            if multirun:
                check_output_dir(Path(hydra_cfg.sweep.dir), "hydra.sweep.dir")
                check_fresh_sweep_dir(Path(hydra_cfg.sweep.dir))
            else:
                check_output_dir(Path(hydra_cfg.run.dir), "hydra.run.dir")
                named_dir = any(o.get_key_element() == "hydra.run.dir" for o in parsed)
                if jobs and compose(config_name, overrides=jobs[0]).get("ckpt_path"):
                    _check_resume_before_hydra(compose(config_name, overrides=jobs[0]))
                if named_dir:  # before Hydra writes into it (a timestamped default folder is locked in the run)
                    from aevb.run_lock import acquire

                    acquire(Path(hydra_cfg.run.dir))
    except AevbError:
        raise
    except (HydraException, OmegaConfBaseException) as exc:
        raise ConfigError(condense(str(exc), str(exc.__cause__ or "")) + quoting_hint(overrides)) from None


_UNQUOTED_OK = re.compile(r"[\w ./:@%+\-~\[\]{},=$*?]*", re.ASCII)  # what Hydra's grammar reads without quotes


def quoting_hint(overrides: list[str]) -> str:
    """For an override whose value Hydra cannot read unquoted (non-ASCII letters, most punctuation): how to
    quote it, for Hydra inside the shell's quotes."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and value and value[0] not in "'\"" and not _UNQUOTED_OK.fullmatch(value):
            escaped = value.replace("\\", "\\\\").replace('"', '\\"')
            return f" (quote a value with such characters for Hydra, inside the shell's quotes: '{key}=\"{escaped}\"')"
    return ""
