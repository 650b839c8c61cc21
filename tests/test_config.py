"""Every config group option composes and points at real code; bad config gets one clear line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from conftest import CONF_DIR, REPO, compose

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


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    options = _options(group)
    assert options, f"conf/{group} is empty"
    for option in options:
        cfg = compose([f"{group}={option}"])
        for target in _targets(cfg):
            assert get_object(target) is not None, f"{group}={option}: {target} does not import"


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


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update({"WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore", **(env_extra or {})})
    exe = Path(sys.executable).with_name("aevb-train")
    return subprocess.run([str(exe), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aevb-train: error: "), lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


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
    _assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()


def test_bad_value_found_at_run_time_gets_one_clear_line(mirror, tmp_path):
    proc = run_cli("data.binarize=sometimes", f"data.mirror={mirror}", "logger=csv", "callbacks=none",
                   f"hydra.run.dir={tmp_path}")
    _assert_one_line_error(proc, "data.binarize must be one of none, static, dynamic, got 'sometimes'")


def test_checksum_mismatch_through_the_cli(mirror, tmp_path):
    import shutil

    bad = tmp_path / "mirror"
    shutil.copytree(mirror, bad)
    target = bad / "frey" / "frey_rawface.mat"
    target.chmod(0o644)
    target.write_bytes(target.read_bytes()[:-10] + b"0123456789")
    proc = run_cli("data=frey_face", "logger=csv", "callbacks=none", f"hydra.run.dir={tmp_path}/run",
                   env_extra={"AEVB_DATA_MIRROR": str(bad)})
    _assert_one_line_error(proc, "checksum mismatch", "frey_rawface.mat", "5aeb024d42b8a6091f30e5eb18c8a48d")
