"""aevb.pictures' labelled figures: titled, labelled, each data pixel drawn 4 x 4 px, read back from the saved files."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aevb import figures_cli, pictures
from test_figures import build, save_ckpt


@pytest.fixture(scope="module")
def frey_model(frey, tmp_path_factory):
    cfg, model = build(frey, 2)
    ckpt = save_ckpt(cfg, model, tmp_path_factory.mktemp("pictures") / "run" / "checkpoints" / "last.ckpt")
    return model, frey, ckpt


def grey(png: Path) -> np.ndarray:
    """The saved picture as a (height, width) array of 0..255 grey values."""
    return np.asarray(Image.open(png).convert("L"), dtype=int)


def check_saved(fig, grid: np.ndarray, png: Path, scale: int = pictures.PIXEL_SCALE) -> tuple[np.ndarray, tuple]:
    """Save ``fig``; the file's size is what save_picture says, and its image is ``grid`` with each
    pixel a scale x scale block (nearest neighbour), so every data pixel is at least 4 x 4 px."""
    path, (width, height), box = pictures.save_picture(fig, png)
    with Image.open(path) as im:
        assert im.size == (width, height)  # PIL: (width, height)
    img = grey(path)
    left, top, right, bottom = box
    assert (right - left, bottom - top) == (grid.shape[1] * scale, grid.shape[0] * scale)
    assert scale >= 4 and width >= right and height >= bottom
    expected = np.kron(np.round(np.clip(grid, 0, 1) * 255), np.ones((scale, scale)))
    assert np.abs(img[top:bottom, left:right] - expected).max() <= 1  # the data, block for block
    return img, box


def inked(region: np.ndarray) -> bool:
    """Has dark (text) pixels on the white background."""
    return region.size > 0 and (region < 128).sum() > 20


def test_samples_figure_is_titled_and_drawn_4px_per_pixel(frey_model, tmp_path):
    model, dm, _ = frey_model
    fig = pictures.samples_figure(model, 100, seed=0, dataset=dm.name)
    title = fig.axes[0].get_title()
    for part in ("100 random samples", "10 x 10", "z ~ N(0, I)", "seed 0", "AEVB", "N_z = 2", "Frey Face"):
        assert part in title, (part, title)
    grid = pictures.sample_grid(model, 100, seed=0)
    assert np.array_equal(fig.axes[0].images[0].get_array(), grid)
    img, (left, top, right, bottom) = check_saved(fig, grid, tmp_path / "samples.png")
    assert inked(img[:top]) and not inked(img[:, :left])  # the title band above, nothing at the side


def test_reconstructions_figure_labels_its_rows(frey_model, tmp_path):
    model, dm, _ = frey_model
    test = dm.splits["test"]
    fig = pictures.reconstructions_figure(model, test, 7, dataset=dm.name, source="the test split (n = 200)")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["data", "reconstruction"]
    assert list(ax.get_yticks()) == [13.5, 41.5]  # the centres of the two rows of 28-pixel images
    assert "first 7 images of the test split (n = 200)" in ax.get_title() and "N_z = 2" in ax.get_title()
    grid = pictures.reconstruction_grid(model, test, 7)
    img, (left, top, right, bottom) = check_saved(fig, grid, tmp_path / "reconstructions.png")
    assert inked(img[top:bottom, :left])  # the row labels, left of the image
    assert inked(img[:top])  # the title


def test_manifold_figure_has_the_z_grid_on_both_axes(frey_model, tmp_path):
    from scipy.stats import norm

    model, dm, _ = frey_model
    fig = pictures.manifold_figure(model, 5, dataset=dm.name)
    ax = fig.axes[0]
    z = [f"{round(v, 2) + 0.0:.2f}" for v in norm.ppf(np.linspace(0.05, 0.95, 5))]  # -1.64, -0.60, 0.00, 0.60, 1.64
    assert z[0] == "-1.64" and z[-1] == "1.64"
    assert [t.get_text() for t in ax.get_yticklabels()] == z and [t.get_text() for t in ax.get_xticklabels()] == z
    assert list(ax.get_yticks()) == [13.5 + 28 * k for k in range(5)]  # z_1 down the rows of 28 px faces
    assert list(ax.get_xticks()) == [9.5 + 20 * k for k in range(5)]  # z_2 along the columns of 20 px faces
    assert "z_1" in ax.get_ylabel() and "z_2" in ax.get_xlabel()
    assert "Figure 4" in ax.get_title() and "N_z = 2" in ax.get_title() and "[0.05, 0.95]" in ax.get_title()
    img, (left, top, right, bottom) = check_saved(fig, pictures.manifold_grid(model, 5), tmp_path / "m.png")
    assert inked(img[bottom:, left:right]) and inked(img[top:bottom, :left]) and inked(img[:top])


def test_the_scale_is_a_choice(frey_model, tmp_path):
    model, dm, _ = frey_model
    fig = pictures.samples_figure(model, 4, dataset=dm.name, scale=6)
    check_saved(fig, pictures.sample_grid(model, 4), tmp_path / "s6.png", scale=6)


def test_commands_say_width_then_height(frey_model, tmp_path, capsys):
    _, _, ckpt = frey_model
    for argv, grid_wh in ((["reconstructions", "--n", "10"], (200, 56)), (["samples", "--n", "6"], (60, 56)),
                          (["manifold", "--grid", "3", "--scale", "5"], (60, 84))):
        png = tmp_path / f"{argv[0]}.png"
        figures_cli.main([argv[0], str(ckpt), "--out", str(png), *argv[1:]])
        out = capsys.readouterr().out
        with Image.open(png) as im:
            width, height = im.size
        assert f"({width} x {height} px (width x height)" in out, out
        scale = 5 if "--scale" in argv else 4
        w, h = grid_wh
        assert f"the {w} x {h} image pixels drawn as {scale} x {scale} px each: {w * scale} x {h * scale} px" in out
        assert width >= w * scale and height > h * scale
        assert not re.search(rf"\b{h}x{w} px", out)  # the old, height-first wording
