"""aevb.figures: Figure 2 from a fabricated sweep, Figures 4/5 and reconstructions from tiny untrained models."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from aevb import figures_cli, pictures, plots
from aevb.errors import AevbError
from aevb.runs import collect_runs, read_curve
from helpers import compose


# ---------------------------------------------------------------------------------------------
# A fabricated sweep: 2 models x 2 latent sizes (Frey Face) + one failed job
# ---------------------------------------------------------------------------------------------
JOBS = [  # (model, N_z, final test ELBO)
    ("AEVB", 2, 801.25),
    ("AEVB", 5, 1012.5),
    ("WakeSleep", 2, 512.75),
    ("WakeSleep", 5, 640.125),
]
FAILED_ERROR = "RuntimeError: CUDA out of memory | tried to allocate 2 GiB"


def _write_job(job_dir: Path, model: str, nz: int, test_elbo: float, curve: bool = True) -> None:
    job_dir.mkdir(parents=True)
    summary = {
        "train/elbo": test_elbo + 20.0, "val/elbo": test_elbo - 3.0, "test/elbo": test_elbo,
        "train/n_datapoints": 1565, "val/n_datapoints": 200, "test/n_datapoints": 200,
        "samples_seen": 1_000_000, "dataset": "frey_face", "latent_dim": nz, "model": model,
        "wall_time_s": 123.4, "units": "nats per datapoint",
    }
    (job_dir / "summary.json").write_text(json.dumps(summary))
    (job_dir / "config_resolved.yaml").write_text(
        f"data:\n  _target_: aevb.data.FreyFaceDataModule\nmodel:\n  _target_: aevb.models.{model}\n  latent_dim: {nz}\n")
    if curve:
        seen = [round(10_000 * 10 ** (i / 4)) for i in range(9)]  # 1e4 .. 1e6, as ElboCurve writes them
        rows = ["samples_seen,train_elbo,test_elbo,train_n,test_n"]
        for s in seen:
            frac = math.log10(s / 1e4) / 2
            rows.append(f"{s},{test_elbo * frac + 20 * frac:.4f},{test_elbo * frac:.4f},1565,200")
        rows.append(rows[-1])  # a resumed run repeats its last row
        (job_dir / "curve.csv").write_text("\n".join(rows) + "\n")


@pytest.fixture()
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun"
    for i, (model, nz, elbo) in enumerate(JOBS):
        _write_job(root / str(i), model, nz, elbo)
    failed = root / str(len(JOBS))
    failed.mkdir()
    (failed / "failed.json").write_text(json.dumps({"status": "failed", "error": FAILED_ERROR}))
    (failed / ".hydra").mkdir()
    (failed / ".hydra" / "config.yaml").write_text(
        "data:\n  _target_: aevb.data.FreyFaceDataModule\nmodel:\n  _target_: aevb.models.AEVB\n  latent_dim: 5\n")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    (root / "not_a_job").mkdir()  # ignored: not a job number
    return root


def test_collect_runs(sweep: Path):
    runs = collect_runs(sweep)
    assert [r.job for r in runs] == ["0", "1", "2", "3", "4"]
    assert [r.status for r in runs] == ["ok"] * 4 + ["failed"]
    assert runs[4].error == FAILED_ERROR and runs[4].latent_dim == 5 and runs[4].dataset == "frey_face"
    assert len(runs[0].curve) == 9  # the repeated row is merged
    assert np.all(np.diff(runs[0].curve.samples_seen) > 0)


def test_fig2_command(sweep: Path, capsys):
    figures_cli.main(["fig2", str(sweep)])
    out = capsys.readouterr()
    png, pdf = sweep / "fig2_frey_face.png", sweep / "fig2_frey_face.pdf"
    assert png.stat().st_size > 10_000 and pdf.stat().st_size > 5_000
    assert pdf.read_bytes().startswith(b"%PDF")
    import matplotlib.image
    img = matplotlib.image.imread(png)
    assert img.shape[1] > img.shape[0] > 300  # a wide row of panels
    assert img[..., :3].std() > 0.05  # not blank

    with (sweep / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    assert [r["status"] for r in rows] == ["ok"] * 4 + ["failed"]
    assert rows[4]["error"] == FAILED_ERROR
    assert float(rows[1]["test_elbo"]) == 1012.5 and rows[1]["test_n"] == "200" and rows[1]["latent_dim"] == "5"
    assert all(r["units"] == "nats per datapoint" for r in rows)

    md = (sweep / "results.md").read_text()
    for _, _, elbo in JOBS:
        assert f"{elbo:.2f} (200)" in md  # test ELBO with its n
    assert "1032.50 (1,565)" in md and "1009.50 (200)" in md  # train and val of job 1
    assert "nats per datapoint" in md and "failed" in md and "CUDA out of memory \\| tried" in md
    assert md.count("\n| ") == 6  # header + 5 jobs

    assert "| 4 | failed |" in out.out and str(png) in out.out and str(sweep / "results.csv") in out.out
    assert "job 4 failed" in out.err


def test_fig2_out_dir(sweep: Path, tmp_path: Path, capsys, monkeypatch):
    drawn = []  # the Figures the command saved

    def plot_fig2(*args, **kwargs):
        drawn.append(plots.plot_fig2(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(figures_cli, "plot_fig2", plot_fig2)
    out = tmp_path / "figs"
    figures_cli.main(["fig2", str(sweep), "--out", str(out), "--ylim", "-100", "1200"])
    assert {p.name for p in out.iterdir()} == {"fig2_frey_face.png", "fig2_frey_face.pdf", "results.csv", "results.md"}
    assert len(drawn) == 1 and all(ax.get_ylim() == (-100.0, 1200.0) for ax in drawn[0].axes)  # --ylim took effect
    figures_cli.main(["fig2", str(sweep), "--out", str(tmp_path / "auto")])
    assert drawn[1].axes[0].get_ylim() != (-100.0, 1200.0)  # without it the data set the range


def test_plot_fig2_panels(sweep: Path):
    runs = collect_runs(sweep)
    fig = plots.plot_fig2(runs)
    axes = fig.get_axes()
    assert len(axes) == 2  # one panel per N_z
    assert [ax.get_title() for ax in axes] == ["N_z = 2", "N_z = 5"]
    assert all(ax.get_xscale() == "log" for ax in axes)
    assert axes[0].get_ylabel() == "lower bound, nats per datapoint"
    assert "Frey Face" in fig._suptitle.get_text() and "nats per datapoint" in fig._suptitle.get_text()
    assert "n = 1,565" in fig._suptitle.get_text() and "n = 200" in fig._suptitle.get_text()
    for ax in axes:  # 2 models x (train solid + test dashed)
        styles = sorted(line.get_linestyle() for line in ax.get_lines())
        assert styles == ["-", "-", "--", "--"]
        assert len({line.get_color() for line in ax.get_lines()}) == 2
    labels = [t.get_text() for t in axes[0].get_legend().get_texts()]
    assert labels == ["AEVB (train)", "AEVB (test)", "Wake-Sleep (train)", "Wake-Sleep (test)"]
    assert any("job 4: failed" in t.get_text() for t in axes[1].texts)


def test_job_without_curve_is_tabled_not_plotted(tmp_path: Path, capsys):
    root = tmp_path / "sweep"
    _write_job(root / "0", "AEVB", 2, 700.0)
    _write_job(root / "1", "AEVB", 3, 750.0, curve=False)
    (root / "2").mkdir()  # killed before writing anything
    figures_cli.main(["fig2", str(root)])
    err = capsys.readouterr().err
    runs = collect_runs(root)
    assert [r.status for r in runs] == ["ok", "ok", "incomplete"]
    fig = plots.plot_fig2(runs)
    assert len(fig.get_axes()) == 2
    assert len(fig.get_axes()[1].get_lines()) == 0
    with (root / "results.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and rows[1]["test_elbo"] == "750.0" and rows[1]["curve_points"] == "0"
    assert rows[2]["status"] == "incomplete"
    assert "no usable curve.csv" in err and "job 2 incomplete" in err


@pytest.mark.parametrize("make, message", [
    (lambda p: None, "not found"),
    (lambda p: p.mkdir(), "no jobs in"),
    (lambda p: (p.mkdir(), (p / "summary.json").write_text("{}")), "single run directory"),
])
def test_fig2_bad_input(tmp_path: Path, capsys, make, message):
    target = tmp_path / "sweep"
    make(target)
    with pytest.raises(AevbError, match=message):
        collect_runs(target)
    with pytest.raises(SystemExit) as exc:
        figures_cli.main(["fig2", str(target)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("aevb-figures: error: ") and message in err[0]


def test_read_curve_rejects_bad_header(tmp_path: Path):
    bad = tmp_path / "curve.csv"
    bad.write_text("step,elbo\n1,2\n")
    with pytest.raises(AevbError, match="lacks column"):
        read_curve(bad)


# ---------------------------------------------------------------------------------------------
# image_grid: torchvision's make_grid, as numpy
# ---------------------------------------------------------------------------------------------
def test_image_grid_exact_sizes_and_order():
    imgs = np.stack([np.full((1, 3, 2), k / 10) for k in range(6)])
    out = pictures.image_grid(imgs, 3)
    assert out.shape == (2 * 3, 3 * 2)
    assert out[0, 0] == 0.0 and out[0, 2] == pytest.approx(0.1) and out[3, 0] == pytest.approx(0.3)  # row-major
    partial = pictures.image_grid(imgs[:5], 3)
    assert partial.shape == (6, 6) and (partial[3:, 4:] == 1.0).all()  # empty slot filled with pad_value
    assert pictures.image_grid(imgs, 2, pad=1).shape == (3 * 3 + 2, 2 * 2 + 1)
    assert pictures.image_grid(np.ones((4, 3, 5, 7)), 2).shape == (10, 14, 3)
    clipped = pictures.image_grid(np.array([[[[-1.0, 2.0, np.nan]]]]), 1)
    assert clipped.tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError):
        pictures.image_grid(imgs, 0)
    assert pictures.square_shape(100) == (10, 10) and pictures.square_shape(6) == (2, 3)


def test_manifold_latents():
    z = pictures.manifold_latents(3)
    assert z.shape == (9, 2)
    assert z[0, 0] == z[1, 0] == z[2, 0] < 0 and z[0, 1] < z[1, 1] < z[2, 1]  # z_1 along rows, z_2 along columns
    assert abs(float(z[4, 0])) < 1e-6 and float(z[8, 0]) == pytest.approx(1.6449, abs=1e-3)  # icdf(0.95)


# ---------------------------------------------------------------------------------------------
# Tiny real models (untrained) for the image figures
# ---------------------------------------------------------------------------------------------
def build(dm, latent_dim: int):
    """An untrained tiny model (16 hidden units) on ``dm``'s data, with its composed config."""
    import torch

    from aevb.building import build as aevb_build

    torch.manual_seed(0)
    cfg = compose([f"data={dm.name}", f"model.latent_dim={latent_dim}", "net.encoder.hidden_dim=16",
                   "net.decoder.hidden_dim=16", f"data.mirror={dm.mirror}"])
    _, model = aevb_build(cfg, data_module=dm)
    return cfg, model.eval()


def save_ckpt(cfg, model, path: Path) -> Path:
    import torch
    from omegaconf import OmegaConf

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "aevb_config": OmegaConf.to_container(cfg, resolve=True)}, path)
    return path


@pytest.fixture(scope="module")
def frey_models(frey, tmp_path_factory):
    """{N_z: (model, data module, checkpoint)} for N_z = 2 and 5 on Frey Face."""
    tmp = tmp_path_factory.mktemp("frey")
    out = {}
    for nz in (2, 5):
        cfg, model = build(frey, nz)
        ckpt = save_ckpt(cfg, model, tmp / f"run_nz{nz}" / "checkpoints" / "last.ckpt")
        out[nz] = (model, frey, ckpt)
    return out


def test_image_grids_frey(frey_models):
    model, dm, _ = frey_models[2]
    grid = pictures.manifold_grid(model, 5)
    assert grid.shape == (5 * 28, 5 * 20)
    assert grid.min() >= 0.0 and grid.max() <= 1.0 and grid.std() > 0
    assert pictures.sample_grid(model, 100, seed=0).shape == (10 * 28, 10 * 20)
    assert pictures.sample_grid(model, 6, seed=0).shape == (2 * 28, 3 * 20)
    a, b = pictures.sample_grid(model, 9, seed=1), pictures.sample_grid(model, 9, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, pictures.sample_grid(model, 9, seed=2))
    rec = pictures.reconstruction_grid(model, dm.splits["test"], 10)
    assert rec.shape == (2 * 28, 10 * 20) and 0.0 <= rec.min() and rec.max() <= 1.0
    assert np.allclose(rec[:28, :20], dm.splits["test"][0, 0].numpy())  # top row is the data
    with pytest.raises(AevbError, match="N_z = 2"):
        pictures.manifold_grid(frey_models[5][0], 5)


def test_image_grids_mnist(mnist):
    import torch

    _, model = build(mnist, 2)
    grid = pictures.manifold_grid(model, 5)
    assert grid.shape == (5 * 28, 5 * 28) and 0.0 <= grid.min() and grid.max() <= 1.0
    # tile (i, j) is the decoder mean at the grid's latent i * 5 + j, row-major
    z = pictures.manifold_latents(5)
    with torch.no_grad():
        means = model.sample(len(z), z=z)
    for i, j in ((0, 0), (1, 3), (4, 4)):
        assert np.allclose(grid[i * 28:(i + 1) * 28, j * 28:(j + 1) * 28], means[i * 5 + j, 0].numpy(), atol=1e-6)
    assert not np.allclose(grid[:28, :28], grid[-28:, -28:])  # opposite corners of the latent square differ
    samples = pictures.sample_grid(model, 16, seed=0)
    assert samples.shape == (4 * 28, 4 * 28) and 0.0 <= samples.min() and samples.max() <= 1.0
    expected = pictures.sample_images(model, 16, seed=0)  # the same seeded draws, tiled row-major
    assert np.allclose(samples[28:56, 56:84], expected[6, 0].numpy(), atol=1e-6)


def test_checkpoint_commands(frey_models, tmp_path, capsys):
    import matplotlib.image

    _, _, ckpt2 = frey_models[2]
    _, _, ckpt5 = frey_models[5]
    png = tmp_path / "manifold.png"
    figures_cli.main(["manifold", str(ckpt2), "--out", str(png), "--grid", "4"])
    assert matplotlib.image.imread(png).shape[:2] == (4 * 28, 4 * 20)
    assert "N_z = 2" in capsys.readouterr().out

    figures_cli.main(["manifold", str(ckpt2.parent.parent)])  # a run directory; default output next to it
    assert matplotlib.image.imread(ckpt2.parent.parent / "manifold.png").shape[:2] == (20 * 28, 20 * 20)

    figures_cli.main(["samples", str(ckpt5), "--n", "6", "--out", str(tmp_path / "s.png")])
    assert matplotlib.image.imread(tmp_path / "s.png").shape[:2] == (2 * 28, 3 * 20)

    figures_cli.main(["reconstructions", str(ckpt2), "--n", "7", "--out", str(tmp_path / "r.png")])
    assert matplotlib.image.imread(tmp_path / "r.png").shape[:2] == (2 * 28, 7 * 20)
    assert "test split (n = 200 datapoints)" in capsys.readouterr().out

    figures_cli.main(["fig5", str(ckpt2), str(ckpt5), "--n", "16", "--out", str(tmp_path / "f5.png")])
    assert (tmp_path / "f5.png").stat().st_size > 5_000
    assert "N_z = 2, 5" in capsys.readouterr().out


def test_checkpoint_command_errors(frey_models, tmp_path, capsys):
    for argv, message in [
        (["manifold", str(frey_models[5][2])], "needs a model with N_z = 2"),
        (["manifold", str(tmp_path / "nope.ckpt")], "not found"),
        (["samples", str(tmp_path)], "checkpoint not found"),
        (["samples", str(frey_models[2][2]), "--n", "0"], "positive integer"),
    ]:
        with pytest.raises(SystemExit) as exc:
            figures_cli.main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("aevb-figures: error: ") and message in err[0], err
