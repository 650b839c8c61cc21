"""Your own data (data=image_folder, data=array): files generated here from real MNIST digits (and coloured,
resized copies), read back exactly, trained on through aevb-train with an exact resume, every backbone and
both methods on them, and one line for each broken input."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from aevb.data.own import ArrayDataModule, ImageFolderDataModule
from aevb.errors import AevbError
from helpers import assert_one_line_error, compose, run_cli

N = 300  # images: 30 test, 30 val, 240 training at the default fractions


@pytest.fixture(scope="module")
def digits(mnist) -> np.ndarray:
    return (mnist.splits["test"][:N, 0].numpy() * 255).round().astype(np.uint8)  # (N, 28, 28) uint8


@pytest.fixture(scope="module")
def folder(digits, tmp_path_factory) -> Path:
    """PNGs in two class sub-folders (names ignored) plus a file that is not an image (skipped)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("own_folder")
    for i, a in enumerate(digits):
        (root / f"class_{i % 2}").mkdir(exist_ok=True)
        Image.fromarray(a).save(root / f"class_{i % 2}" / f"{i:04d}.png")
    (root / "labels.txt").write_text("not an image\n")
    return root


def _all(dm) -> torch.Tensor:
    dm.setup()
    return torch.cat([dm.splits[s] for s in ("train", "val", "test")])


def _sorted_rows(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(len(x), -1)
    return flat[np.lexsort(flat.numpy().T[::-1])]


def test_an_image_folder_is_read_exactly_and_split_by_its_seed(folder, digits):
    dm = ImageFolderDataModule(path=str(folder))
    x = _all(dm)
    assert dm.data_shape == (1, 28, 28) and [dm.split_size(s) for s in ("train", "val", "test")] == [240, 30, 30]
    assert torch.equal(_sorted_rows(x), _sorted_rows(torch.from_numpy(digits[:, None] / 255.0).float()))
    again, other = ImageFolderDataModule(path=str(folder)), ImageFolderDataModule(path=str(folder), split_seed=1)
    again.setup(), other.setup()
    assert torch.equal(again.splits["test"], dm.splits["test"]) and not torch.equal(other.splits["test"],
                                                                                    dm.splits["test"])


def test_array_files_npy_npz_and_pt_give_the_same_images(digits, tmp_path):
    want = torch.from_numpy(digits[:, None] / 255.0).float()
    np.save(tmp_path / "a.npy", digits)  # N x H x W uint8
    np.savez(tmp_path / "b.npz", images=digits[:, None], labels=np.arange(N))  # N x C x H x W, two arrays
    torch.save(want.clone(), tmp_path / "c.pt")  # float in [0, 1]
    for name, extra in (("a.npy", {}), ("b.npz", {"key": "images"}), ("c.pt", {})):
        dm = ArrayDataModule(path=str(tmp_path / name), **extra)
        assert torch.allclose(_sorted_rows(_all(dm)), _sorted_rows(want), atol=1e-7), name
    with pytest.raises(AevbError, match=r"b\.npz holds the arrays images, labels: name one with data\.key="):
        ArrayDataModule(path=str(tmp_path / "b.npz")).setup()


def test_colour_images_of_mixed_sizes_are_resized_and_every_backbone_and_method_trains(tmp_path, mnist):
    """RGB PNG and JPEG files of two sizes, data.size=[20,16]: (3, 20, 16) images; the MLP, CNN and U-Net under
    AEVB, and the MLP under wake-sleep, each take 30 steps on them and raise their objective."""
    from PIL import Image

    from aevb.building import build
    from aevb.cli import check_values

    rgb = (mnist.splits["train"][:120, 0].numpy() * 255).astype(np.uint8)
    for i, a in enumerate(rgb):
        im = Image.fromarray(np.stack([a, a[::-1], 255 - a], axis=-1))
        (im.resize((24, 30)) if i % 2 else im).save(tmp_path / f"{i:03d}.{'png' if i % 3 else 'jpg'}")
    small = {"mlp": ["net.encoder.hidden_dim=32", "net.decoder.hidden_dim=32"],
             "cnn": ["net.encoder.channels=[4,8]", "net.decoder.channels=[4,8]", "model.init_std=null"],
             "unet": ["net.encoder.channels=[4,8]", "net.decoder.channels=[4,8]", "net.encoder.norm_groups=4",
                      "net.decoder.norm_groups=4", "model.init_std=null"]}
    for net, model_name in (("mlp", "aevb"), ("cnn", "aevb"), ("unet", "aevb"), ("mlp", "wake_sleep")):
        cfg = compose(["data=image_folder", f"data.path={tmp_path}", "data.size=[20,16]", f"net={net}",
                       f"model={model_name}", "model.latent_dim=4", *small[net]])
        check_values(cfg)
        dm, model = build(cfg)
        assert dm.data_shape == (3, 20, 16) and model.sample(2).shape == (2, 3, 20, 16)
        x = dm.splits["train"][:50]
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1)
            before = model.elbo_terms(x).elbo.mean().item()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        torch.manual_seed(0)
        for _ in range(30):
            opt.zero_grad()
            (-model.elbo_terms(x).elbo.mean()).backward()
            opt.step()
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(1)
            after = model.elbo_terms(x).elbo.mean().item()
        assert np.isfinite(after) and after > before + 20, (net, model_name, before, after)


def _env(mirror) -> dict:
    tests = str(Path(__file__).resolve().parent)
    return {"AEVB_DATA_MIRROR": str(mirror), "PYTHONPATH": os.pathsep.join(
        p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)}


def test_aevb_train_learns_on_a_folder_and_a_sigterm_resumes_exactly(folder, mirror, tmp_path):
    args = ("data=image_folder", f"data.path={folder}", "max_samples=3000", "logger=csv", "callbacks.progress_bar=null",
            "trainer.val_check_interval=5")
    whole, part = tmp_path / "whole", tmp_path / "part"
    ref = run_cli(*args, f"hydra.run.dir={whole}", env_extra=_env(mirror))
    assert ref.returncode == 0, ref.stderr[-3000:]
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["dataset"] == "image_folder" and summary["samples_seen"] == 3000
    assert [summary[f"{s}/n_datapoints"] for s in ("train", "val", "test")] == [240, 30, 30]
    assert summary["test/elbo"] > -784 * np.log(2) + 150  # from -543 nats untrained
    assert "image_folder test split, 30 datapoints" in ref.stdout

    stopped = run_cli(*args, f"hydra.run.dir={part}", "+callbacks.stop._target_=kill_callbacks.SignalAt",
                      "+callbacks.stop.step=12", "+callbacks.stop.sig=SIGTERM", env_extra=_env(mirror))
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    resumed = run_cli(*args, f"hydra.run.dir={part}", f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
                      env_extra=_env(mirror))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((part / "summary.json").read_text())
    for key in ("train/elbo", "val/elbo", "test/elbo", "samples_seen", "global_step"):
        assert got[key] == summary[key], key

    # the same checkpoint on changed images: refused in one line
    changed = tmp_path / "changed"
    changed.mkdir()
    for p in sorted(folder.rglob("*.png"))[:-1]:
        (changed / p.name).write_bytes(p.read_bytes())
    other = run_cli(*[a if not a.startswith("data.path") else f"data.path={changed}" for a in args],
                    f"hydra.run.dir={tmp_path / 'other'}", f"ckpt_path={part / 'checkpoints' / 'last.ckpt'}",
                    env_extra=_env(mirror))
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-3000:]
    assert_one_line_error(other, "are not the ones this checkpoint was trained on", "resume with the same data",
                          only_line=False)


def _broken(tmp_path: Path, digits) -> dict:
    from PIL import Image

    cases = {}
    cases["missing"] = (ImageFolderDataModule, tmp_path / "nowhere", r"data\.path .*nowhere does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    cases["empty"] = (ImageFolderDataModule, tmp_path / "empty", r"holds no PNG/JPG/JPEG files")
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(5):
        Image.fromarray(digits[i]).save(bad / f"{i}.png")
    (bad / "3.png").write_bytes(b"\x89PNG not really")
    cases["broken file"] = (ImageFolderDataModule, bad, r"cannot read image .*3\.png")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(digits[0]).save(mixed / "a.png")
    Image.fromarray(digits[1][:20]).save(mixed / "b.png")
    cases["mixed sizes"] = (ImageFolderDataModule, mixed,
                            r"differ in size \(a\.png: 28x28, b\.png: 28x20, width x height\): set data\.size=")
    np.save(tmp_path / "big.npy", np.full((10, 8, 8), 2.0, dtype=np.float32))
    cases["outside [0, 1]"] = (ArrayDataModule, tmp_path / "big.npy", r"values must lie in \[0, 1\].* found 2 \.\. 2")
    np.save(tmp_path / "flat.npy", np.zeros((10, 64), dtype=np.uint8))
    cases["shape"] = (ArrayDataModule, tmp_path / "flat.npy", r"expected N x H x W or N x C x H x W .* \(10, 64\)")
    (tmp_path / "x.csv").write_text("1,2\n")
    cases["suffix"] = (ArrayDataModule, tmp_path / "x.csv", r"expected a \.npy, \.npz, \.pt file")
    return cases


def test_every_broken_input_is_one_clear_error(digits, tmp_path, mirror):
    for name, (cls, path, pattern) in _broken(tmp_path, digits).items():
        with pytest.raises(AevbError, match=pattern):
            cls(path=str(path)).setup()
    with pytest.raises(AevbError, match=r"data\.path is required for data=image_folder"):
        ImageFolderDataModule()
    # through aevb-train: one line, no traceback, no run folder left
    proc = run_cli("data=image_folder", f"data.path={tmp_path / 'bad'}", f"hydra.run.dir={tmp_path / 'run'}",
                   env_extra=_env(mirror))
    assert_one_line_error(proc, "cannot read image", "3.png")
    assert not (tmp_path / "run").exists()
