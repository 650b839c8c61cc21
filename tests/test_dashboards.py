"""What wandb and TensorBoard receive, read back from the run folders; load_from_checkpoint; the console.

One small sweep (AEVB and wake-sleep, MLP and CNN, Frey Face, N_z = 2, 1,000 training samples: under one
epoch, so no validation runs during fit) serves the wandb, checkpoint and console tests; one run with
logger=tensorboard and a test loop cut to one batch serves the TensorBoard and count tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import wandb_records
from helpers import run_cli

METHODS = {"aevb": "AEVB", "wake_sleep": "WakeSleep"}


@pytest.fixture(scope="module")
def sweep(mirror, tmp_path_factory):
    root = tmp_path_factory.mktemp("dash_sweep")
    proc = run_cli("-m", "data=frey_face", "model=aevb,wake_sleep", "net=mlp,cnn", "model.latent_dim=2",
                   "model/optimizer=adam", "model.init_std=null", "max_samples=1000", "logger=wandb",
                   "callbacks.progress_bar=null", f"hydra.sweep.dir={root}", timeout=900,
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = {}
    for job in sorted(p for p in root.iterdir() if (p / "summary.json").is_file()):
        overrides = (job / ".hydra" / "overrides.yaml").read_text()
        method = "wake_sleep" if "model=wake_sleep" in overrides else "aevb"
        net = "cnn" if "net=cnn" in overrides else "mlp"
        jobs[(method, net)] = job
    assert len(jobs) == 4, proc.stdout[-2000:]
    return root, jobs, proc


def offline_run(job: Path) -> Path:
    (run,) = (job / "wandb").glob("offline-run-*")
    return run


def test_wandb_images_are_the_figures_pictures_in_uint8(sweep):
    from PIL import Image

    from aevb.dashboards import to_uint8
    from aevb.pictures import manifold_grid, reconstruction_grid, sample_grid
    from aevb.models.base import VAEModuleBase

    _, jobs, _ = sweep
    for (method, net), job in jobs.items():
        run = offline_run(job)
        rows = [r for r in wandb_records.history(run) if "images/samples/path" in r]
        assert len(rows) == 1, (method, net)
        model = VAEModuleBase.load_from_checkpoint(job / "checkpoints" / "last.ckpt")
        expected = {"samples": sample_grid(model, 100, seed=0), "manifold": manifold_grid(model, 20),
                    "reconstructions": reconstruction_grid(model, _frey_test(model), 10)}
        for key, grid in expected.items():
            png = np.asarray(Image.open(run / "files" / rows[0][f"images/{key}/path"]))
            assert png.dtype == np.uint8 and png.ndim == 2, (key, png.dtype, png.shape)
            assert png.max() > 64, f"{key}: maximum pixel {png.max()}: the [0, 1] grid reached wandb unscaled"
            assert np.abs(png.astype(int) - to_uint8(grid).astype(int)).max() <= 1, key
            assert "N_z = 2" in rows[0][f"images/{key}/caption"]


def _frey_test(model):
    from aevb.data import FreyFaceDataModule

    dm = FreyFaceDataModule(mirror=model.run_config["data"]["mirror"])
    dm.setup()
    return dm.splits["test"]


def test_wandb_config_names_tags_group_axis_and_summary(sweep):
    root, jobs, _ = sweep
    for (method, net), job in jobs.items():
        run = offline_run(job)
        cfg = wandb_records.config(run)
        assert cfg["data"]["_target_"].endswith("FreyFaceDataModule") and cfg["run"]["dataset"] == "frey_face"
        assert cfg["run"]["method"] == method and cfg["model"]["_target_"].endswith(METHODS[method])
        assert cfg["model"]["optimizer"]["_target_"] == "torch.optim.Adam" and cfg["run"]["optimizer"] == "Adam"
        assert cfg["model"]["optimizer"]["lr"] == cfg["run"]["lr"] == 0.001
        assert cfg["net"]["encoder"]["_target_"].endswith(f"{net.upper()}Encoder")
        assert cfg["run"]["backbone"] == f"{net.upper()}Encoder / {net.upper()}Decoder"
        assert cfg["seed"] == 0 and cfg["max_samples"] == 1000 and cfg["run"]["budget"] == "max_samples=1000"
        assert cfg["run"]["version"] and "git_commit" in cfg["run"]

        record = wandb_records.run_record(run)
        assert record.display_name == f"{method} Nz=2 net={net} seed=0"  # what varies in the sweep, and the seed
        assert record.job_type == method and record.run_group == f"{root.parent.name}/{root.name}"
        assert {method, "frey_face", "Nz=2", f"net={net}"} <= set(record.tags)

        axes = wandb_records.metric_definitions(run)
        assert all(axes[glob] == "samples_seen" for glob in ("train/*", "val/*", "curve/*", "final/*"))
        curve_rows = [r for r in wandb_records.history(run) if "curve/test_elbo" in r]
        assert [r["samples_seen"] for r in curve_rows] == [1000]  # the end of training, on the samples axis

        summary = json.loads((job / "summary.json").read_text())
        logged = wandb_records.summary(run)
        for key in ("train/elbo", "val/elbo", "test/elbo", "samples_seen", "test/n_datapoints"):
            assert logged[key] == pytest.approx(summary[key]), key


def test_load_from_checkpoint_without_arguments_and_best_ckpt_under_one_epoch(sweep):
    import torch

    from aevb.checkpoints import load_model
    from aevb.errors import AevbError
    from aevb.models import AEVB
    from aevb.models.wake_sleep import WakeSleep

    _, jobs, _ = sweep
    classes = {"aevb": AEVB, "wake_sleep": WakeSleep}
    for (method, net), job in jobs.items():
        last, best = job / "checkpoints" / "last.ckpt", job / "checkpoints" / "best.ckpt"
        # no validation ran in 10 steps of a 15-step epoch: best.ckpt is the final model
        assert best.is_file() and best.read_bytes() == last.read_bytes(), (method, net)
        cls, other = classes[method], classes["wake_sleep" if method == "aevb" else "aevb"]
        model = cls.load_from_checkpoint(best)
        assert type(model) is cls and not model.training and model.samples_seen == 1000
        assert type(model.encoder).__name__ == f"{net.upper()}Encoder"
        stored = torch.load(best, map_location="cpu", weights_only=False)["state_dict"]
        assert all(torch.equal(model.state_dict()[k], v) for k, v in stored.items())
        reference, dm, _ = load_model(last)
        x = dm.splits["test"][:50]
        torch.manual_seed(0)
        a = model.elbo_terms(x).recon
        torch.manual_seed(0)
        assert torch.allclose(a, reference.elbo_terms(x).recon)
        with pytest.raises(AevbError, match=f"holds a {cls.__name__} model, not {other.__name__}"):
            other.load_from_checkpoint(last)


def test_sweep_console_is_quiet(sweep):
    _, jobs, proc = sweep
    out = proc.stdout + proc.stderr
    for noise in ("GPU available", "Tip:", "LeafSpec", "srun", "could not find the monitored key", "Testing",
                  "wandb: Tracking run", "Run history"):
        assert noise not in out, noise
    assert out.count("wandb sync ") == len(jobs)  # once per run
    assert out.count("run folder: ") == len(jobs) and out.count("best.ckpt: the final model") == len(jobs)


def test_tensorboard_one_event_file_scalars_hparams_images_and_true_counts(mirror, tmp_path):
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    proc = run_cli("data=frey_face", "model.latent_dim=2", "max_samples=3000", "logger=tensorboard",
                   "callbacks.progress_bar=null", "data.eval_batch_size=50", "+trainer.limit_test_batches=1",
                   f"hydra.run.dir={tmp_path}", env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    # the test loop saw one batch of 50 of each split's frames: that is what the report and summary count
    assert [summary[f"{s}/n_datapoints"] for s in ("train", "val", "test")] == [50, 50, 50]
    assert "(50 datapoints)" in proc.stdout and "200 datapoints" not in proc.stdout
    assert "(200 val images)" in proc.stdout  # the validations during fit saw the whole val split
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()

    files = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = event_accumulator.EventAccumulator(str(files[0]), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/elbo_running", "val/elbo", "curve/test_elbo", "final/train/elbo", "final/test/elbo",
                "final/test/n_datapoints", "hp_metric"):
        assert tag in tags["scalars"], tag
    assert "train/elbo" not in tags["scalars"]  # the running mean and the fixed-subset value have their own tags
    assert acc.Scalars("final/train/elbo")[-1].value == pytest.approx(summary["train/elbo"], abs=1e-3)
    (hp,) = acc.Scalars("hp_metric")
    assert hp.value == pytest.approx(summary["test/elbo"], abs=1e-3) and hp.step == summary["global_step"]
    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["hp_metric"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model/latent_dim"].number_value == 2 and start.hparams["seed"].number_value == 0
    assert start.hparams["model/optimizer/_target_"].string_value == "aevb.optim.Adagrad"
    for key in ("samples", "reconstructions", "manifold"):
        (event,) = acc.Images(f"images/{key}")
        import io

        png = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
        assert png.dtype == np.uint8 and png.max() > 64, (key, png.max())
