"""Shared test fixtures: the real data mirror (../shared/data) and tiny Hydra configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONF_DIR = REPO / "conf"


def _mirror_path() -> Path:
    env = os.environ.get("AEVB_DATA_MIRROR")
    return Path(env) if env else REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real-data mirror; tests that need it skip, visibly, where it is absent."""
    path = _mirror_path()
    if not (path / "mnist").is_dir() or not (path / "frey").is_dir():
        pytest.skip(f"real data mirror not found at {path} (set AEVB_DATA_MIRROR or place ../shared/data)")
    return path


@pytest.fixture(scope="session")
def mnist(mirror):
    from aevb.data import MNISTDataModule

    dm = MNISTDataModule(mirror=str(mirror))
    dm.setup()
    return dm


@pytest.fixture(scope="session")
def frey(mirror):
    from aevb.data import FreyFaceDataModule

    dm = FreyFaceDataModule(mirror=str(mirror))
    dm.setup()
    return dm


def compose(overrides: list[str]):
    """Compose conf/train.yaml with overrides, resolvable outside a Hydra run."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from aevb.wandb_mode import register_resolver

    register_resolver()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("train", overrides=["paths.output_dir=/tmp/aevb-test-unused", *overrides])
