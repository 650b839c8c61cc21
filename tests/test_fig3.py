"""Figure 3: MNIST training subsets, the marginal-likelihood curve callback, the fig3 sweep and its figure."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from aevb import figures_cli, plots
from aevb.errors import ConfigError
from aevb.runs import collect_fig3_runs
from helpers import compose, run_cli

HEADER = ["samples_seen", "train_log_px", "test_log_px", "k", "train_n", "test_n"]
TINY = ["model.latent_dim=3", "net.encoder.hidden_dim=16", "net.decoder.hidden_dim=16"]


# ---------------------------------------------------------------------------------------------
# data.train_size
# ---------------------------------------------------------------------------------------------
def test_train_size_keeps_the_first_images_and_sets_n_train(mnist, mirror):
    from aevb.data import MNISTDataModule
    from aevb.building import build

    cfg = compose([f"data.mirror={mirror}", "data.train_size=1000", *TINY])
    dm, model = build(cfg)
    s = dm.splits
    assert s["train"].shape == (1000, 1, 28, 28) and dm.n_train == 1000 and model.n_train == 1000
    assert torch.equal(s["train"], mnist.splits["train"][:1000]) and len(dm.labels["train"]) == 1000
    # the fixed train subset of the final ELBO comes from the reduced set: min(10,000, 1,000) images of it
    assert s["train_eval"].shape == (1000, 1, 28, 28) and torch.equal(s["train_eval"], s["train"])
    assert torch.equal(s["val"], mnist.splits["val"]) and torch.equal(s["test"], mnist.splits["test"])
    assert len(dm.train_dataloader()) == 10  # M = 100, drop_last

    assert MNISTDataModule(mirror=str(mirror), val_size=5000, train_size=55_000).train_size == 55_000
    for bad in (0, -1, 50_001, True, 2.5):
        with pytest.raises(ConfigError, match=r"data\.train_size must be null \(all\) or between 1 and 50,000"):
            MNISTDataModule(mirror=str(mirror), train_size=bad)
    small = MNISTDataModule(mirror=str(mirror), train_size=50, batch_size=100)
    with pytest.raises(ConfigError, match=r"data\.batch_size \(100\) is larger than the training set \(50\)"):
        small.train_dataloader()


# ---------------------------------------------------------------------------------------------
# MarginalLikelihoodCurve, in process on a tiny model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_fit(mirror, tmp_path_factory):
    """30 steps (3,000 samples) of a latent-3, hidden-16 AEVB on 500 images, both curve callbacks attached."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from aevb.callbacks import ElboCurve
    from aevb.callbacks_marginal import MarginalLikelihoodCurve
    from aevb.building import build

    class WithElbo(MarginalLikelihoodCurve):
        """Also records the ELBO on the very same images at every point (mean of 20 draws per datapoint)."""

        elbos: list

        def evaluate(self, trainer, pl_module):
            super().evaluate(trainer, pl_module)
            was_training = pl_module.training
            pl_module.eval()
            with torch.no_grad():
                row = [int(pl_module.samples_seen)]
                for split in ("train", "test"):
                    x = self.subsets(trainer.datamodule)[split]
                    row.append(sum(pl_module.elbo_terms(x).elbo.double().mean().item() for _ in range(20)) / 20)
            pl_module.train(was_training)
            self.elbos.append(row)

    out = tmp_path_factory.mktemp("marginal_fit")
    L.seed_everything(0, verbose=False)
    dm, model = build(compose([f"data.mirror={mirror}", "data.train_size=500", *TINY]))
    marginal = WithElbo(k=20, n_datapoints=200, points_per_decade=4, start=1000, verbose=True)
    marginal.elbos = []
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=30, default_root_dir=str(out),
                        logger=CSVLogger(str(out), name="csv", version=""), enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, log_every_n_steps=1,
                        callbacks=[ElboCurve(points_per_decade=4, start=1000), marginal])
    trainer.fit(model, datamodule=dm)
    return out, trainer, model, marginal


def test_marginal_curve_csv_rows_bound_the_elbo_from_above(tiny_fit, capsys):
    out, _, _, marginal = tiny_fit
    with (out / "marginal_curve.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == HEADER
    data = [dict(zip(HEADER, map(float, r))) for r in rows[1:]]
    # grid 1000 * 10**(i/4): 1,000 and 1,778 (first reached at 1,800), then the end of training at 3,000
    assert [int(r["samples_seen"]) for r in data] == [1000, 1800, 3000]
    with (out / "curve.csv").open() as f:  # ElboCurve: the same grid
        assert [int(r["samples_seen"]) for r in csv.DictReader(f)] == [1000, 1800, 3000]
    assert all(r["k"] == 20 and r["train_n"] == 200 and r["test_n"] == 200 for r in data)
    assert [e[0] for e in marginal.elbos] == [1000, 1800, 3000]
    for r, (_, train_elbo, test_elbo) in zip(data, marginal.elbos):
        # log p(x) estimate (k = 20) >= ELBO on the same 200 images, up to Monte Carlo noise (nats per datapoint)
        assert r["train_log_px"] >= train_elbo - 0.5, (r, train_elbo)
        assert r["test_log_px"] >= test_elbo - 0.5, (r, test_elbo)
        assert -600 < r["test_log_px"] < -100
    assert data[-1]["test_log_px"] > data[0]["test_log_px"]  # it learns
    logged = list(csv.DictReader((out / "csv" / "metrics.csv").open()))
    assert sum(bool(r.get("marginal/train_log_px")) for r in logged) == 3
    assert sum(bool(r.get("marginal/test_log_px")) for r in logged) == 3


def test_marginal_curve_is_reproducible_and_restores_train_mode(tiny_fit):
    _, trainer, model, marginal = tiny_fit
    x = marginal.subsets(trainer.datamodule)["test"]
    assert x.shape == (200, 1, 28, 28)
    model.train()
    first = marginal.estimate(model, x)
    assert model.training
    assert marginal.estimate(model, x) == first  # fixed proposal seed: the same number twice
    n_rows = len((Path(trainer.default_root_dir) / "marginal_curve.csv").read_text().splitlines())
    marginal.evaluate(trainer, model)
    assert model.training and all(m.training for m in model.modules())
    lines = (Path(trainer.default_root_dir) / "marginal_curve.csv").read_text().splitlines()
    assert len(lines) == n_rows + 1 and lines[-1].split(",")[2] == f"{first[0]:.4f}"


def test_both_curve_files_restart_on_a_fresh_run_and_keep_their_rows_on_resume(tmp_path):
    """ElboCurve's curve.csv and MarginalLikelihoodCurve's marginal_curve.csv share the append and resume code."""
    from types import SimpleNamespace

    from aevb.callbacks import ElboCurve
    from aevb.callbacks_marginal import MarginalLikelihoodCurve

    trainer = SimpleNamespace(default_root_dir=str(tmp_path), loggers=[], global_step=7)
    for cb, values, row in ((ElboCurve(start=1000), (-150.5, -160.25, 1000, 500), "3200,-150.5000,-160.2500,1000,500"),
                            (MarginalLikelihoodCurve(k=20, start=1000), (-140.5, -150.125, 20, 200, 100),
                             "3200,-140.5000,-150.1250,20,200,100")):
        path = tmp_path / cb.filename
        assert cb.curve_path(trainer) == path
        for seen in (1000, 1778, 3162):
            cb.append_row(trainer, SimpleNamespace(samples_seen=seen), values, {})
        lines = path.read_text().splitlines()
        assert lines[0] + "\n" == cb.HEADER and len(lines) == 4 and cb.last_evaluated == 3162
        cb.on_train_start(trainer, SimpleNamespace(samples_seen=1778))  # resumed: keeps the rows it reached
        assert path.read_text().splitlines() == lines[:3]
        assert cb.append_row(trainer, SimpleNamespace(samples_seen=3200), values, {}) == 3200
        assert path.read_text().splitlines() == [*lines[:3], row]
        cb.on_train_start(trainer, SimpleNamespace(samples_seen=0))  # a fresh run in the same directory
        assert path.read_text() == cb.HEADER
    assert (tmp_path / "curve.csv").read_text().startswith("samples_seen,train_elbo,test_elbo,train_n,test_n\n")
    assert (tmp_path / "marginal_curve.csv").read_text().startswith(",".join(HEADER) + "\n")


def test_marginal_curve_rejects_bad_settings():
    from aevb.callbacks_marginal import MarginalLikelihoodCurve

    for key, bad in (("k", 0), ("n_datapoints", -5), ("points_per_decade", 0), ("chunk_size", 1.5)):
        with pytest.raises(ConfigError, match=rf"callbacks\.marginal_curve\.{key} must be a positive integer"):
            MarginalLikelihoodCurve(**{key: bad})


# ---------------------------------------------------------------------------------------------
# The sweep through aevb-train, and aevb-figures fig3
# ---------------------------------------------------------------------------------------------
def test_experiment_composes_to_the_papers_small_model():
    cfg = compose(["experiment=fig3_mnist"])
    assert cfg.model.latent_dim == 3 and cfg.net.encoder.hidden_dim == 100 and cfg.net.decoder.hidden_dim == 100
    assert cfg.max_samples == 100_000_000 and cfg.callbacks.progress_bar is None
    assert cfg.callbacks.marginal_curve._target_ == "aevb.callbacks_marginal.MarginalLikelihoodCurve"
    assert cfg.logger.wandb.group == "fig3_mnist"
    hydra_cfg = compose(["experiment=fig3_mnist"], return_hydra_config=True).hydra
    assert "/fig3_mnist/" in hydra_cfg.sweep.dir
    params = hydra_cfg.sweeper.params
    assert params.model == "aevb,wake_sleep" and params["data.train_size"] == "1000,50000"


def test_fig3_sweep_and_figure(mirror, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "experiment=fig3_mnist", "max_samples=2000", "data.train_size=1000", "logger=csv",
                   "callbacks.marginal_curve.k=10", "callbacks.marginal_curve.n_datapoints=50",
                   "callbacks.marginal_curve.start=1000", "callbacks.model_checkpoint=null",
                   "callbacks.elbo_curve=null", f"hydra.sweep.dir={sweep}",
                   env_extra={"AEVB_DATA_MIRROR": str(mirror)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "nats per datapoint, importance sampled, k = 10" in proc.stdout
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert jobs == ["0", "1"]  # model sweeps; data.train_size=1000 on the command line replaces the sweep's 1000,50000
    models = set()
    for job in jobs:
        summary = json.loads((sweep / job / "summary.json").read_text())
        models.add(summary["model"])
        assert summary["samples_seen"] == 2000 and summary["train/n_datapoints"] == 1000
        rows = list(csv.DictReader((sweep / job / "marginal_curve.csv").open()))
        assert [int(r["samples_seen"]) for r in rows] == [1000, 1800, 2000]
        assert all(r["k"] == "10" and r["train_n"] == "50" and r["test_n"] == "50" for r in rows)
    assert models == {"AEVB", "WakeSleep"}

    capsys.readouterr()
    figures_cli.main(["fig3", str(sweep), "--out", str(tmp_path / "figs")])
    out = capsys.readouterr().out
    png, pdf = tmp_path / "figs" / "fig3_mnist.png", tmp_path / "figs" / "fig3_mnist.pdf"
    assert png.stat().st_size > 10_000 and pdf.is_file()
    assert f"{png}: Figure 3, MNIST" in out and "nats per datapoint" in out and "N_train = 1000" in out
    assert "train n = 50, test n = 50 datapoints, k = 10 importance samples" in out
    assert "| 0 | ok | AEVB | 1,000 | 2,000 |" in out and "| 1 | ok | Wake-Sleep | 1,000 | 2,000 |" in out


def _fake_job(job_dir: Path, model: str, train_size: int | None, final: float | None) -> None:
    job_dir.mkdir(parents=True)
    size = f"  train_size: {train_size}\n" if train_size is not None else "  train_size: null\n  val_size: 10000\n"
    (job_dir / "config_resolved.yaml").write_text(
        f"data:\n  _target_: aevb.data.MNISTDataModule\n{size}model:\n  _target_: aevb.models.{model}\n  latent_dim: 3\n")
    if final is None:
        (job_dir / "failed.json").write_text(json.dumps({"status": "failed", "error": "RuntimeError: boom"}))
        return
    (job_dir / "summary.json").write_text(json.dumps({"model": model, "dataset": "mnist", "latent_dim": 3}))
    lines = [",".join(HEADER)] + [f"{s},{final - 1000 / s:.4f},{final - 2000 / s:.4f},100,1000,1000"
                                  for s in (10_000, 17_783, 31_623, 100_000)]
    (job_dir / "marginal_curve.csv").write_text("\n".join(lines) + "\n")


def test_plot_fig3_panels_per_training_set_size(tmp_path, capsys):
    for i, (model, size, final) in enumerate([("AEVB", 1000, -140.0), ("WakeSleep", 1000, -160.0),
                                              ("AEVB", None, -120.0), ("WakeSleep", None, None)]):
        _fake_job(tmp_path / "sweep" / str(i), model, size, final)
    runs = collect_fig3_runs(tmp_path / "sweep")
    assert [r.train_size for r in runs] == [1000, 1000, 50_000, 50_000]
    assert runs[3].marginal is None and runs[3].run.status == "failed"
    fig = plots.plot_fig3(runs)
    assert [ax.get_title() for ax in fig.axes] == ["N_train = 1000", "N_train = 50000"]
    assert "k = 100" in fig.axes[0].get_ylabel() and "nats per datapoint" in fig.axes[0].get_ylabel()
    ax = fig.axes[0]
    assert [ln.get_linestyle() for ln in ax.lines] == ["-", "--", "-", "--"]
    assert [ln.get_color() for ln in ax.lines[::2]] == [plots.MODEL_COLOURS["AEVB"], plots.MODEL_COLOURS["WakeSleep"]]
    figures_cli.main(["fig3", str(tmp_path / "sweep")])
    captured = capsys.readouterr()
    assert (tmp_path / "sweep" / "fig3_mnist.png").is_file() and (tmp_path / "sweep" / "fig3_mnist.pdf").is_file()
    assert "| 2 | ok | AEVB | 50,000 | 100,000 | -120.01 (1,000) | -120.02 (1,000) | 100 |" in captured.out
    assert "job 3 failed: RuntimeError: boom" in captured.err

    with pytest.raises(SystemExit):
        figures_cli.main(["fig3", str(tmp_path / "sweep" / "0")])  # a job folder, not a sweep
    assert "not a multirun" in capsys.readouterr().err
    for job in ("0", "1", "2"):
        (tmp_path / "sweep" / job / "marginal_curve.csv").unlink()
    with pytest.raises(SystemExit):  # a sweep without the callback (e.g. a Figure 2 sweep)
        figures_cli.main(["fig3", str(tmp_path / "sweep")])
    assert "no Figure 3 drawn" in capsys.readouterr().err
