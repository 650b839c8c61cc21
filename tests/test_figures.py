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
    # outside the sweep folder the table is named after the sweep ("multirun")
    assert {p.name for p in out.iterdir()} == {"fig2_frey_face.png", "fig2_frey_face.pdf",
                                               "results_multirun.csv", "results_multirun.md"}
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
    labels = [t.get_text() for t in fig.legends[0].get_texts()]  # one legend, below the panels
    assert labels[:4] == ["AEVB (train)", "AEVB (test)", "Wake-Sleep (train)", "Wake-Sleep (test)"]
    # the curves start at 0 and the lowest final value is 512.75: the early points are clipped and said so
    assert labels[4:] == ["clipped: below the axis (filled train, open test)"]
    assert any("job 4: failed" in t.get_text() for t in axes[1].texts)
    assert any("below the axis clipped" in t.get_text() for t in axes[0].texts)


# ---------------------------------------------------------------------------------------------
# Figure 2's y-range: the curves that matter, not wake-sleep's first points
# ---------------------------------------------------------------------------------------------
SEEN = [round(10_000 * 10 ** (i / 4)) for i in range(13)]  # 1e4 .. 1e7


def _rise(start: float, end: float) -> np.ndarray:
    return start + (end - start) * np.linspace(0.0, 1.0, len(SEEN)) ** 0.3


def _write_values(job_dir: Path, model: str, nz: int, dataset: str, test: np.ndarray) -> None:
    """A finished job whose curve.csv has the given test ELBOs (train = test + 3) at SEEN."""
    job_dir.mkdir(parents=True)
    (job_dir / "summary.json").write_text(json.dumps({
        "dataset": dataset, "latent_dim": nz, "model": model, "samples_seen": SEEN[-1], "test/elbo": float(test[-1]),
        "train/n_datapoints": 1000, "test/n_datapoints": 10000, "units": "nats per datapoint"}))
    (job_dir / "config_resolved.yaml").write_text(f"model:\n  _target_: aevb.models.{model}\n  latent_dim: {nz}\n")
    rows = ["samples_seen,train_elbo,test_elbo,train_n,test_n"]
    rows += [f"{s},{v + 3:.4f},{v:.4f},1000,10000" for s, v in zip(SEEN, test)]
    (job_dir / "curve.csv").write_text("\n".join(rows) + "\n")


MNIST_CURVES = [  # (model, N_z, test ELBO curve): wake-sleep starts near -990 at N_z = 20 and 200
    ("AEVB", 3, _rise(-200, -130)), ("AEVB", 20, _rise(-540, -105)), ("AEVB", 200, _rise(-540, -100)),
    ("WakeSleep", 3, _rise(-210, -150)), ("WakeSleep", 20, _rise(-990, -140)), ("WakeSleep", 200, _rise(-990, -152)),
]


def test_fig2_ylim_fits_the_final_values_not_the_first_points():
    ws = np.linspace(-990.0, -150.0, 10)
    aevb = np.linspace(-130.0, -100.0, 10)
    lo, hi = plots.fig2_ylim([ws, aevb])
    span = -100.0 - -150.0
    assert lo == pytest.approx(-150.0 - plots.YLIM_MARGIN * span) and hi == pytest.approx(-100.0 + plots.YLIM_MARGIN * span)
    assert -160 < lo < -150 and -100 < hi < -90  # not down to -990
    below, above = plots.clipped_points(ws, lo, hi)
    assert below.sum() == 9 and not below[-1] and not above.any()  # all but the last wake-sleep point
    assert not any(m.any() for m in plots.clipped_points(aevb, lo, hi))
    # Frey Face: positive values; the range starts at the lowest final value, not at the first points near 0
    lo, hi = plots.fig2_ylim([np.linspace(0, 1600, 8), np.linspace(-300, 900, 8)])
    assert lo == pytest.approx(900 - plots.YLIM_MARGIN * 700) and hi == pytest.approx(1600 + plots.YLIM_MARGIN * 700)
    # non-finite values are ignored; a flat curve still gets a range; nothing finite: no opinion
    assert plots.fig2_ylim([np.array([np.nan, -120.0, -110.0, np.inf])]) == pytest.approx((-115.5, -104.5))  # 5 % of 110
    assert plots.fig2_ylim([[-100.0, -100.0]]) == pytest.approx((-105.0, -95.0))
    assert plots.fig2_ylim([[np.nan], []]) is None


def test_plot_fig2_default_range_clips_and_marks_the_early_points(tmp_path: Path):
    root = tmp_path / "fig2_mnist"
    for i, (model, nz, test) in enumerate(MNIST_CURVES):
        _write_values(root / str(i), model, nz, "mnist", test)
    runs = collect_runs(root)
    fig = plots.plot_fig2(runs)
    lo, hi = fig.axes[0].get_ylim()
    expected = plots.fig2_ylim([c for _, _, t in MNIST_CURVES for c in (t + 3, t)])
    assert (lo, hi) == pytest.approx(expected) and lo > -170 and hi < -90  # AEVB vs wake-sleep readable
    assert all(ax.get_ylim() == (lo, hi) for ax in fig.axes)
    n_below = sum(int((c < lo).sum()) for _, _, t in MNIST_CURVES for c in (t + 3, t))
    assert n_below > 20 and plots.clipped_counts(fig) == (n_below, 0)
    for ax in fig.axes:  # each clipped point is a triangle at the lower edge, and the panel counts them
        marks = [c for c in ax.collections if c.get_gid() == "clipped below"]
        k = sum(len(c.get_offsets()) for c in marks)
        assert k and all(np.allclose(c.get_offsets()[:, 1], lo) for c in marks)
        assert any(f"{k} points below the axis clipped" in t.get_text() for t in ax.texts), [t.get_text() for t in ax.texts]
    assert "clipped: below the axis" in fig.legends[0].get_texts()[-1].get_text()

    wide = plots.plot_fig2(runs, ylim=(-1000.0, -50.0))  # --ylim overrides the rule: nothing clipped
    assert all(ax.get_ylim() == (-1000.0, -50.0) for ax in wide.axes) and plots.clipped_counts(wide) == (0, 0)
    assert not any("clipped" in t.get_text() for t in wide.legends[0].get_texts())
    narrow = plots.plot_fig2(runs, ylim=(-300.0, -120.0))  # and its outside points are marked on both edges
    below, above = plots.clipped_counts(narrow)
    assert above == sum(int((c > -120).sum()) for _, _, t in MNIST_CURVES for c in (t + 3, t)) > 0 and below > 0


# ---------------------------------------------------------------------------------------------
# One table file per sweep
# ---------------------------------------------------------------------------------------------
def test_two_sweeps_into_one_folder_keep_one_table_each(tmp_path: Path, capsys):
    for name, dataset, curves in (("fig2_mnist", "mnist", MNIST_CURVES[:2]),
                                  ("fig2_frey", "frey_face", [("AEVB", 2, _rise(0, 1200)), ("WakeSleep", 2, _rise(0, 900))])):
        for i, (model, nz, test) in enumerate(curves):
            _write_values(tmp_path / "sweeps" / name / str(i), model, nz, dataset, test)
    figs = tmp_path / "figures"
    figures_cli.main(["fig2", str(tmp_path / "sweeps" / "fig2_mnist"), "--out", str(figs)])
    figures_cli.main(["fig2", str(tmp_path / "sweeps" / "fig2_frey"), "--out", str(figs)])
    out = capsys.readouterr()
    assert {p.name for p in figs.iterdir()} == {
        "results_fig2_mnist.csv", "results_fig2_mnist.md", "fig2_mnist.png", "fig2_mnist.pdf",
        "results_fig2_frey.csv", "results_fig2_frey.md", "fig2_frey_face.png", "fig2_frey_face.pdf"}
    mnist_md, frey_md = (figs / "results_fig2_mnist.md").read_text(), (figs / "results_fig2_frey.md").read_text()
    assert "| mnist |" in mnist_md and "frey_face" not in mnist_md and "-105.00 (10,000)" in mnist_md
    assert "| frey_face |" in frey_md and "| mnist |" not in frey_md and "1200.00 (10,000)" in frey_md
    assert mnist_md.startswith(f"# Sweep results: {(tmp_path / 'sweeps' / 'fig2_mnist').resolve()}\n")
    assert [r["dataset"] for r in csv.DictReader((figs / "results_fig2_frey.csv").open())] == ["frey_face"] * 2
    assert str(figs / "results_fig2_mnist.md") in out.out and str(figs / "results_fig2_frey.md") in out.out
    assert "y-axis" in out.out and "nats per datapoint" in out.out and "warning" not in out.err

    # a second sweep of the same folder name drawn into the same folder: its table replaces the first, and it says so
    for i, (model, nz, test) in enumerate(MNIST_CURVES[2:4]):
        _write_values(tmp_path / "other" / "fig2_mnist" / str(i), model, nz, "mnist", test)
    figures_cli.main(["fig2", str(tmp_path / "other" / "fig2_mnist"), "--out", str(figs)])
    err = capsys.readouterr().err
    assert "results_fig2_mnist.md held the table of another sweep" in err and str(tmp_path / "sweeps") in err

    # in the sweep folder itself the table keeps the sweep report's name
    figures_cli.main(["fig2", str(tmp_path / "sweeps" / "fig2_frey")])
    assert (tmp_path / "sweeps" / "fig2_frey" / "results.md").is_file()
    assert not list((tmp_path / "sweeps" / "fig2_frey").glob("results_*"))


def test_fig3_table_file_per_sweep(tmp_path: Path, capsys):
    from test_fig3 import _fake_job

    for name, final in (("fig3_a", -140.0), ("fig3_b", -120.0)):
        _fake_job(tmp_path / name / "0", "AEVB", 1000, final)
        figures_cli.main(["fig3", str(tmp_path / name), "--out", str(tmp_path / "figs")])
    a, b = (tmp_path / "figs" / "log_px_fig3_a.md").read_text(), (tmp_path / "figs" / "log_px_fig3_b.md").read_text()
    assert "-140.01 (1,000)" in a and "-120.01 (1,000)" in b and "nats per datapoint" in a
    assert str(tmp_path / "figs" / "log_px_fig3_b.md") in capsys.readouterr().out
    figures_cli.main(["fig3", str(tmp_path / "fig3_a")])
    assert "-140.01 (1,000)" in (tmp_path / "fig3_a" / "log_px.md").read_text()


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


def _at_least_4x(png: Path, rows: int, cols: int) -> None:
    """The picture holds a grid of rows x cols data pixels drawn 4 x 4 px each, plus its title and labels."""
    import matplotlib.image

    height, width = matplotlib.image.imread(png).shape[:2]
    assert width >= 4 * cols and height > 4 * rows, (png, width, height, rows, cols)


def test_checkpoint_commands(frey_models, tmp_path, capsys):
    _, _, ckpt2 = frey_models[2]
    _, _, ckpt5 = frey_models[5]
    png = tmp_path / "manifold.png"
    figures_cli.main(["manifold", str(ckpt2), "--out", str(png), "--grid", "4"])
    _at_least_4x(png, 4 * 28, 4 * 20)
    out = capsys.readouterr().out
    assert "N_z = 2" in out and "the 80 x 112 image pixels drawn as 4 x 4 px each: 320 x 448 px" in out

    figures_cli.main(["manifold", str(ckpt2.parent.parent)])  # a run directory; default output next to it
    _at_least_4x(ckpt2.parent.parent / "manifold.png", 20 * 28, 20 * 20)

    figures_cli.main(["samples", str(ckpt5), "--n", "6", "--out", str(tmp_path / "s.png")])
    _at_least_4x(tmp_path / "s.png", 2 * 28, 3 * 20)

    figures_cli.main(["reconstructions", str(ckpt2), "--n", "7", "--out", str(tmp_path / "r.png")])
    _at_least_4x(tmp_path / "r.png", 2 * 28, 7 * 20)
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
