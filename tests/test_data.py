"""Real MNIST and Frey Face: shapes, splits, ranges; and a clear error for every kind of bad data."""

from __future__ import annotations

import gzip
import shutil
import types

import numpy as np
import pytest
import torch

from aevb.data import FreyFaceDataModule, MNISTDataModule
from aevb.errors import ConfigError, DataError


def test_mnist_shapes_splits_and_ranges(mnist):
    s = mnist.splits
    assert s["train"].shape == (50_000, 1, 28, 28)
    assert s["val"].shape == (10_000, 1, 28, 28)
    assert s["test"].shape == (10_000, 1, 28, 28)
    assert s["train_eval"].shape == (10_000, 1, 28, 28)
    for x in s.values():
        assert x.dtype == torch.float32 and x.min() == 0.0 and x.max() == 1.0
    # statistics quoted in ../shared/data/README.md: all 60k training images, and the test set
    assert torch.cat([s["train"], s["val"]]).double().mean().item() == pytest.approx(0.130660, abs=1e-5)
    assert s["test"].double().mean().item() == pytest.approx(0.132515, abs=1e-5)
    # the validation set is the *last* 10k training images, as in the authors' code
    counts = torch.bincount(torch.cat([mnist.labels["train"], mnist.labels["val"]]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert mnist.data_shape == (1, 28, 28) and mnist.n_train == 50_000
    assert len(mnist.train_dataloader()) == 500  # M = 100, drop_last
    assert next(iter(mnist.train_dataloader())).shape == (100, 1, 28, 28)


def test_mnist_validation_size_is_configurable(mirror):
    dm = MNISTDataModule(mirror=str(mirror), val_size=5000)
    dm.setup()
    assert len(dm.splits["train"]) == 55_000 and len(dm.splits["val"]) == 5000
    for bad in (-1, 60_000, True):
        with pytest.raises(ConfigError, match=r"data.val_size must be between 0 \(no validation set\) and 59999"):
            MNISTDataModule(mirror=str(mirror), val_size=bad)
    every = MNISTDataModule(mirror=str(mirror), val_size=0)
    assert every.n_train == 60_000 and every.split_size("val") == 0 and not every.has_val
    assert every.splits["val"].shape == (0, 1, 28, 28) and len(every.train_dataloader()) == 600


def test_frey_face_shapes_split_and_pixel_scale(frey, mirror):
    s = frey.splits
    assert s["train"].shape == (1565, 1, 28, 20)
    assert s["val"].shape == (200, 1, 28, 20) and s["test"].shape == (200, 1, 28, 20)
    raw = np.load(mirror / "frey" / "frey_rawface.npy")  # (1965, 28, 20) uint8, upright faces
    everything = torch.cat([s["train"], s["val"], s["test"]]).reshape(1965, -1) * 256
    assert torch.equal(everything.round().to(torch.uint8).sort(0).values,
                       torch.from_numpy(raw.reshape(1965, -1)).sort(0).values)
    assert s["train"].min().item() == pytest.approx(8 / 256) and frey.splits["train"].max() <= 238 / 256
    # the split is disjoint, reproducible, and a function of split_seed
    rows = lambda t: {tuple(r) for r in (t.reshape(len(t), -1) * 256).round().int().tolist()}  # noqa: E731
    again = FreyFaceDataModule(mirror=str(mirror))
    again.setup()
    assert torch.equal(again.splits["test"], s["test"])
    other = FreyFaceDataModule(mirror=str(mirror), split_seed=1)
    other.setup()
    assert not torch.equal(other.splits["test"], s["test"])
    assert len(rows(s["test"]) & rows(s["train"])) <= 1  # frames are distinct, up to rare exact duplicates


def test_binarization(mirror):
    static = MNISTDataModule(mirror=str(mirror), binarize="static")
    static.setup()
    assert set(static.splits["train"][:100].unique().tolist()) == {0.0, 1.0}
    dynamic = MNISTDataModule(mirror=str(mirror), binarize="dynamic")
    dynamic.setup()
    assert dynamic.splits["train"][:100].unique().numel() > 2  # resampled per batch instead
    assert set(dynamic.splits["test"].unique().tolist()) == {0.0, 1.0}
    assert set(dynamic.splits["train_eval"].unique().tolist()) == {0.0, 1.0}  # scored like val/test
    assert torch.equal(dynamic.splits["test"], static.splits["test"])  # same seed, same eval data
    batch = dynamic.splits["train"][:100]
    dynamic.trainer = types.SimpleNamespace(training=True)
    a, b = dynamic.on_after_batch_transfer(batch, 0), dynamic.on_after_batch_transfer(batch, 0)
    assert set(a.unique().tolist()) == {0.0, 1.0} and not torch.equal(a, b)
    assert abs(a.mean().item() - batch.mean().item()) < 0.02
    with pytest.raises(ConfigError, match="data.binarize"):
        MNISTDataModule(mirror=str(mirror), binarize="sometimes")


@pytest.fixture
def mirror_copy(mirror, tmp_path):
    """A writable copy of the mirror to damage."""
    dst = tmp_path / "mirror"
    shutil.copytree(mirror / "mnist", dst / "mnist")
    shutil.copytree(mirror / "frey", dst / "frey")
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    return dst


def _setup(cls, **kw):
    dm = cls(**kw)
    dm.setup()
    return dm


def test_checksum_mismatch_names_file_expected_and_got(mirror_copy):
    path = mirror_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[100] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError) as err:
        _setup(MNISTDataModule, mirror=str(mirror_copy))
    msg = str(err.value)
    assert "checksum mismatch" in msg and str(path) in msg
    assert "27ae3e4e09519cfbb04c329615203637" in msg  # expected
    import hashlib

    assert hashlib.md5(bytes(data)).hexdigest() in msg  # got
    assert "\n" not in msg


def test_truncated_gzip_and_corrupt_mat_are_reported(mirror_copy):
    path = mirror_copy / "mnist" / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[: 200_000])
    with pytest.raises(DataError, match="truncated or corrupt"):
        _setup(MNISTDataModule, mirror=str(mirror_copy))
    mat = mirror_copy / "frey" / "frey_rawface.mat"
    mat.write_bytes(b"this is not a MATLAB file" * 10)
    with pytest.raises(DataError, match="checksum mismatch"):
        _setup(FreyFaceDataModule, mirror=str(mirror_copy))
    with pytest.raises(DataError, match="truncated or corrupt"):
        _setup(FreyFaceDataModule, mirror=str(mirror_copy), verify_checksums=False)


def test_wrong_array_shape_is_reported(mirror_copy):
    from scipy.io import savemat

    savemat(mirror_copy / "frey" / "frey_rawface.mat", {"ff": np.zeros((560, 100), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"wrong array shape.*\(560, 100\).*\(560, 1965\)"):
        _setup(FreyFaceDataModule, mirror=str(mirror_copy), verify_checksums=False)
    idx = mirror_copy / "mnist" / "t10k-labels-idx1-ubyte.gz"
    idx.write_bytes(gzip.compress((2049).to_bytes(4, "big") + (5).to_bytes(4, "big") + bytes(5)))
    with pytest.raises(DataError, match=r"wrong array shape.*dims \(5,\).*\(10000,\)"):
        _setup(MNISTDataModule, mirror=str(mirror_copy), verify_checksums=False)


@pytest.fixture
def no_network(monkeypatch):
    """Every download fails fast: nothing listens on the proxy's port."""
    monkeypatch.delenv("AEVB_DATA_MIRROR", raising=False)
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.setenv("no_proxy", "")


def test_missing_mirror_folder_and_missing_file(tmp_path, mirror_copy, no_network):
    with pytest.raises(DataError, match="is not a folder"):
        _setup(MNISTDataModule, mirror=str(tmp_path / "nowhere"))
    (mirror_copy / "frey" / "frey_rawface.mat").unlink()
    with pytest.raises(DataError, match="frey/frey_rawface.mat is missing from the data mirror .* and the download failed"):
        _setup(FreyFaceDataModule, mirror=str(mirror_copy), data_dir=str(tmp_path / "empty"))



def test_file_missing_from_the_mirror_is_found_in_data_dir(mirror, mirror_copy, tmp_path, no_network):
    (mirror_copy / "frey" / "frey_rawface.mat").unlink()
    shutil.copytree(mirror / "frey", tmp_path / "local" / "frey")
    dm = _setup(FreyFaceDataModule, mirror=str(mirror_copy), data_dir=str(tmp_path / "local"))
    assert dm.n_train == 1565


def test_no_data_and_no_network_says_how_to_point_at_a_local_copy(tmp_path, no_network):
    with pytest.raises(DataError) as err:
        _setup(FreyFaceDataModule, data_dir=str(tmp_path))
    msg = str(err.value)
    assert "download failed" in msg and "AEVB_DATA_MIRROR" in msg and "\n" not in msg
    assert not list(tmp_path.rglob("*.mat")), "a failed download must not leave a file behind"


def test_local_data_dir_with_mirror_layout_works_without_mirror(mirror, tmp_path, monkeypatch):
    monkeypatch.delenv("AEVB_DATA_MIRROR", raising=False)
    shutil.copytree(mirror / "frey", tmp_path / "frey")
    dm = _setup(FreyFaceDataModule, data_dir=str(tmp_path))
    assert dm.n_train == 1565


def test_under_ddp_each_eval_datapoint_goes_to_exactly_one_rank_and_train_order_agrees(frey):
    seen, orders = [], []
    for rank in (0, 1):
        frey.trainer = types.SimpleNamespace(world_size=2, global_rank=rank, current_epoch=3)
        seen += [x for batch in frey.eval_dataloader("test", distributed=True) for x in batch]
        orders.append([idx for batch in frey.train_dataloader().sampler for idx in batch])
    frey.trainer = None
    assert len(seen) == 200  # 200 test frames, no padding by repetition
    assert torch.equal(torch.stack(seen).sum(0), frey.splits["test"].sum(0))
    assert orders[0] == orders[1] and sorted(orders[0]) != orders[0]  # both ranks draw the same epoch order before Lightning deals it out
