"""Every config group option composes and points at real code; bad config gets one clear line."""

from __future__ import annotations

import importlib.util
import os

import pytest
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf

from helpers import CONF_DIR, assert_one_line_error, compose, run_cli

TENSORBOARD = any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))
GROUPS = ["data", "net", "net/encoder", "net/decoder", "model", "model/optimizer", "trainer", "logger",
          "callbacks", "experiment"]


def _targets(node):
    if OmegaConf.is_dict(node):
        for key, value in node.items():
            if key == "_target_":
                yield value
            else:
                yield from _targets(value)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _own_data(mnist, tmp_path) -> dict:
    import numpy as np
    from PIL import Image

    digits = (mnist.splits["test"][:20, 0].numpy() * 255).astype(np.uint8)
    (tmp_path / "own_images").mkdir()
    for i, a in enumerate(digits):
        Image.fromarray(a).save(tmp_path / "own_images" / f"{i}.png")
    np.save(tmp_path / "own.npy", digits)
    return {"image_folder": tmp_path / "own_images", "array": tmp_path / "own.npy"}


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group, mnist, frey, tmp_path, monkeypatch):
    """Every option composes and its targets instantiate: data module, networks and model (through
    build, on the real data), callbacks, loggers and trainer (a GPU trainer only where a GPU is)."""
    import torch
    from hydra.utils import instantiate

    from aevb.building import build

    monkeypatch.setenv("WANDB_MODE", "offline")
    options = _options(group)
    assert options, f"conf/{group} is empty"
    own = _own_data(mnist, tmp_path)  # data=image_folder / data=array read files made here from MNIST digits
    for option in options:
        extra = [f"data.path={own[option]}"] if group == "data" and option in own else []
        cfg = compose([f"{group}={option}", *extra], output_dir=tmp_path / option)
        for target in _targets(cfg):
            assert get_object(target) is not None, f"{group}={option}: {target} does not import"
        data = instantiate(cfg.data)  # reads no data before setup()
        _, model = build(cfg, data_module={"mnist": mnist, "frey_face": frey}.get(data.name, data))
        assert model.latent_dim == cfg.model.latent_dim and type(model).__name__ == cfg.model._target_.rsplit(".")[-1]
        for node in ("callbacks", "logger"):
            for key, sub in (cfg.get(node) or {}).items():  # (a scalar is a setting, e.g. test_every_n_epochs)
                if isinstance(sub, DictConfig) and not (key == "tensorboard" and not TENSORBOARD):  # optional package
                    assert type(instantiate(sub)).__name__ == sub._target_.rsplit(".")[-1], f"{group}={option}: {key}"
        if cfg.trainer.accelerator == "gpu" and torch.cuda.device_count() < cfg.trainer.devices:
            continue  # composed and imported above; instantiating needs the GPUs
        assert instantiate(cfg.trainer, logger=False, callbacks=[]).max_epochs == cfg.trainer.max_epochs


@pytest.mark.parametrize("data,shape,likelihood,hidden", [("mnist", (1, 28, 28), "Bernoulli", 500),
                                                          ("frey_face", (1, 28, 20), "Gaussian", 200)])
def test_paper_model_builds_from_config(mirror, data, shape, likelihood, hidden):
    from aevb.models import AEVB
    from aevb.nets.base import count_parameters
    from aevb.building import build

    cfg = compose([f"data={data}", f"data.mirror={mirror}", "model.latent_dim=5"])
    dm, model = build(cfg)
    assert isinstance(model, AEVB) and dm.data_shape == shape
    assert type(model.likelihood).__name__ == likelihood
    d = shape[0] * shape[1] * shape[2]
    assert count_parameters(model.encoder) == d * hidden + hidden + 2 * (hidden * 5 + 5)
    n_out = d * (2 if likelihood == "Gaussian" else 1)
    assert count_parameters(model.decoder) == 5 * hidden + hidden + hidden * n_out + n_out
    p = next(model.parameters())
    assert abs(p.std().item() - 0.01) < 0.002  # N(0, 0.01) init (std 0.01)


@pytest.mark.parametrize("args,fragments", [
    (["data=imagenet"], ["unknown option 'imagenet' for config group 'data'", "frey_face", "mnist"]),
    (["net=transformer"], ["unknown option 'transformer' for config group 'net'"]),
    (["model.latent_dim=0"], ["model.latent_dim must be a positive integer, got 0"]),
    (["model.latent_dim=-3"], ["model.latent_dim must be a positive integer, got -3"]),
    (["net.encoder.hidden_dim=0"], ["net.encoder.hidden_dim must be a positive integer, got 0"]),
    (["model.latent_dim=3,5"], ["need --multirun"]),
    (["trainer.max_epoch=3"], ["unknown config key 'trainer.max_epoch'"]),
    (["-m", "model.latent_dim=3,0"], ["model.latent_dim must be a positive integer, got 0"]),
])
def test_bad_config_gets_one_clear_line_before_any_work(args, fragments, tmp_path):
    proc = run_cli(*args, f"hydra.run.dir={tmp_path}/run", f"hydra.sweep.dir={tmp_path}/sweep")
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_bad_value_found_at_run_time_gets_one_clear_line(mirror, tmp_path):
    proc = run_cli("data.binarize=sometimes", f"data.mirror={mirror}", "logger=csv", "callbacks=none",
                   f"hydra.run.dir={tmp_path}")
    assert_one_line_error(proc, "data.binarize must be one of none, static, dynamic, got 'sometimes'")


def test_checksum_mismatch_through_the_cli(mirror, tmp_path):
    import shutil

    bad = tmp_path / "mirror"
    shutil.copytree(mirror, bad)
    target = bad / "frey" / "frey_rawface.mat"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    proc = run_cli("data=frey_face", "logger=csv", "callbacks=none", f"hydra.run.dir={tmp_path}/run",
                   env_extra={"AEVB_DATA_MIRROR": str(bad)})
    assert_one_line_error(proc, "checksum mismatch", "frey_rawface.mat", "5aeb024d42b8a6091f30e5eb18c8a48d")


HEAVY = ("torch", "lightning", "wandb", "torchmetrics", "matplotlib")


@pytest.mark.parametrize("override,fragment", [("data=imagenet", "unknown option 'imagenet'"),
                                               ("model.latent_dim=0", "model.latent_dim must be a positive"),
                                               ("model.latnt_dim=3", "unknown config key 'model.latnt_dim'")])
def test_config_errors_are_answered_before_torch_lightning_or_wandb_load(override, fragment):
    """Composing and checking the config needs Hydra and OmegaConf only: a typo is answered in a fraction of
    the start-up of a run (the heavy imports alone take 8-27 s on the 2-core machine)."""
    import subprocess
    import sys

    probe = ("import atexit, sys\n"
             f"atexit.register(lambda: print('loaded:', [m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr))\n"
             f"sys.argv = ['aevb-train', {override!r}]\n"
             "from aevb.train import main\nmain()\n")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("aevb-train: error: ")]
    assert len(errors) == 1 and fragment in errors[0], proc.stderr
    assert "loaded: []" in proc.stderr, proc.stderr


def test_a_run_that_fails_before_training_leaves_no_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    proc = run_cli(f"data.mirror={tmp_path / 'nowhere'}", "logger=csv", f"hydra.run.dir={run_dir}")
    assert_one_line_error(proc, "is not a folder", only_line=False)
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


def test_plain_aevb_train_finds_shared_data_beside_the_clone_as_the_makefile_does(tmp_path, monkeypatch):
    from aevb import cli

    monkeypatch.setattr(cli, "CHECKOUT", tmp_path / "clone")
    monkeypatch.delenv("AEVB_DATA_MIRROR", raising=False)
    cli.use_shared_mirror()  # no ../shared/data/mnist beside the clone: nothing set
    assert "AEVB_DATA_MIRROR" not in os.environ
    (tmp_path / "shared" / "data" / "mnist").mkdir(parents=True)
    cli.use_shared_mirror()
    assert os.environ["AEVB_DATA_MIRROR"] == str(tmp_path / "shared" / "data")
    monkeypatch.setenv("AEVB_DATA_MIRROR", "/elsewhere")
    cli.use_shared_mirror()  # one the user set wins
    assert os.environ["AEVB_DATA_MIRROR"] == "/elsewhere"
