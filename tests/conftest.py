"""Shared test fixtures: the real data mirror (../shared/data) and its data modules (helpers.py: the functions)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import mirror_path


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The real-data mirror; tests that need it skip, visibly, where it is absent."""
    path = mirror_path()
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
