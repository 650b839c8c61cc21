"""Pictures drawn from a model: Figure 4's manifold, samples (Figure 5's panels), reconstructions.

The grid builders (``manifold_grid``, ``sample_grid``, ``reconstruction_grid``) return a numpy
array with values in [0, 1] (2-D for grey images), one array pixel per data pixel; aevb-train logs
them to wandb and TensorBoard (aevb.dashboards). Tiling is torchvision's ``make_grid``.

The figure builders (``manifold_figure``, ``samples_figure``, ``reconstructions_figure``) draw the
same grids as matplotlib Figures with a title (what, which model, N_z, data set, how many), row
labels or the manifold's z values as ticks, each data pixel ``PIXEL_SCALE`` x ``PIXEL_SCALE``
screen pixels (nearest neighbour); ``save_picture`` writes one and says where the image lies in it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from aevb.errors import AevbError, require_positive_int
from aevb.evaluation import eval_mode
from aevb.runs import dataset_name, model_label

MANIFOLD_RANGE = (0.05, 0.95)  # open unit square: the inverse Gaussian CDF is infinite at 0 and 1
PIXEL_SCALE = 4  # screen pixels per data pixel, each way, in the labelled pictures
PICTURE_DPI = 100


def image_grid(images, cols: int, pad: int = 0, pad_value: float = 1.0) -> np.ndarray:
    """(N, C, H, W) images -> one array of ceil(N / cols) rows and ``cols`` columns, row-major.

    With pad = 0 (the default) the result is exactly (rows*H, cols*W); C = 3 adds a trailing
    colour axis. Empty slots hold pad_value; NaN becomes 0 and values are clipped to [0, 1].
    """
    x = torch.as_tensor(np.asarray(images.detach().cpu() if hasattr(images, "detach") else images), dtype=torch.float32)
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"image_grid expects (N, C, H, W) images with C in (1, 3), got shape {tuple(x.shape)}")
    if cols < 1 or pad < 0:
        raise ValueError(f"image_grid needs cols >= 1 and pad >= 0, got {cols}, {pad}")
    x = torch.nan_to_num(x, nan=0.0).clamp(0.0, 1.0)
    grid = make_grid(x, nrow=cols, padding=pad, pad_value=pad_value)
    if pad:  # make_grid also pads the outer border; keep padding between images only
        grid = grid[:, pad:-pad, pad:-pad]
    out = grid.permute(1, 2, 0).numpy()
    return out[..., 0] if x.shape[1] == 1 else out


def square_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding n images, cols >= rows."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def latent_dim_of(model) -> int:
    return int(getattr(model, "latent_dim", None) or model.encoder.latent_dim)


def manifold_latents(n: int, lo: float = MANIFOLD_RANGE[0], hi: float = MANIFOLD_RANGE[1]) -> torch.Tensor:
    """(n*n, 2) latents: an n x n grid on [lo, hi]^2 through the inverse Gaussian CDF; z_1 varies along rows."""
    if not 0.0 < lo <= hi < 1.0:
        raise AevbError(f"the manifold grid must lie inside the open unit square, got [{lo}, {hi}]")
    u = torch.linspace(lo, hi, n) if n > 1 else torch.tensor([0.5])
    z = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z1, z2 = torch.meshgrid(z, z, indexing="ij")
    return torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)


def manifold_grid(model, n: int = 20, lo: float = MANIFOLD_RANGE[0], hi: float = MANIFOLD_RANGE[1]) -> np.ndarray:
    """Figure 4: decoder means E[x|z] over an n x n latent grid, tiled to (n*H, n*W). Needs N_z = 2."""
    require_positive_int("the manifold grid size", n)
    nz = latent_dim_of(model)
    if nz != 2:
        raise AevbError(f"the manifold (Figure 4) needs a model with N_z = 2, this one has N_z = {nz}")
    shape = tuple(getattr(model.encoder, "latent_shape", (nz,)))
    if shape != (2,):
        raise AevbError(f"the manifold (Figure 4) needs a flat 2-D latent, this model's latent has shape {shape}")
    z = manifold_latents(n, lo, hi).to(_device(model))
    with eval_mode(model):
        images = model.sample(len(z), z=z)
    return image_grid(images, n)


def sample_images(model, n: int = 100, seed: int = 0) -> torch.Tensor:
    """n mean images E[x|z] for z ~ N(0, I) drawn from a generator seeded with ``seed`` (global RNG untouched)."""
    require_positive_int("the number of samples", n)
    gen = torch.Generator().manual_seed(int(seed))
    z = torch.randn((n, *model.encoder.latent_shape), generator=gen).to(_device(model))
    with eval_mode(model):
        return model.sample(n, z=z)


def sample_grid(model, n: int = 100, seed: int = 0) -> np.ndarray:
    """Figure 5 panel: n random samples (decoder means) tiled in the most square grid (square_shape(n))."""
    require_positive_int("the number of samples", n)
    return image_grid(sample_images(model, n, seed), square_shape(n)[1])


def reconstruction_grid(model, x, n: int = 10) -> np.ndarray:
    """Top row: the first n images of x; bottom row: decoder mean at the encoder mean. Shape (2*H, n*W)."""
    require_positive_int("the number of reconstructions", n)
    x = torch.as_tensor(x)[:n].to(_device(model))
    with eval_mode(model), torch.no_grad():
        mean, _logvar = model.encoder(x)
        recon = model.likelihood.mean(model.decoder(mean))
    return image_grid(torch.cat([x.float(), recon.float()]), len(x))


def save_image(array: np.ndarray, out: str | Path) -> Path:
    """Save a tiled [0, 1] array pixel for pixel (grey scale for 2-D arrays)."""
    import matplotlib.image

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    matplotlib.image.imsave(out, array, cmap="gray", vmin=0.0, vmax=1.0)
    return out


# ---------------------------------------------------------------------------------------------
# Labelled pictures: the grids above as matplotlib Figures, titled, at PIXEL_SCALE px per data pixel
# ---------------------------------------------------------------------------------------------
def picture_figure(grid: np.ndarray, title: str, *, scale: int = PIXEL_SCALE, row_ticks=None, col_ticks=None,
                   xlabel: str | None = None, ylabel: str | None = None):
    """A Figure (one Axes) showing ``grid`` ([0, 1]; 2-D grey or H x W x 3) under ``title``.

    The image is exactly ``scale`` x ``scale`` screen pixels per grid pixel at PICTURE_DPI, nearest
    neighbour, frameless. ``row_ticks`` / ``col_ticks``: (positions in grid pixels, labels) for the
    y / x axis; an axis without them has no ticks.
    """
    from matplotlib.figure import Figure

    require_positive_int("the picture scale", scale)
    h, w = grid.shape[:2]
    left, bottom = (160 if row_ticks or ylabel else 10), (90 if col_ticks or xlabel else 10)
    top = 20 + 16 * (title.count("\n") + 1)
    fw, fh = w * scale + left + 10, h * scale + bottom + top  # pixels; save_picture crops to the content
    fig = Figure(figsize=(fw / PICTURE_DPI, fh / PICTURE_DPI), dpi=PICTURE_DPI)
    ax = fig.add_axes((left / fw, bottom / fh, w * scale / fw, h * scale / fh))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", resample=False, aspect="equal")
    ax.set_title(title, fontsize=9)
    for axis, ticks, label in ((ax.yaxis, row_ticks, ylabel), (ax.xaxis, col_ticks, xlabel)):
        if ticks:
            axis.set_ticks(ticks[0], labels=ticks[1])
        else:
            axis.set_ticks([])
        if label:
            axis.set_label_text(label, fontsize=9)
    ax.tick_params(labelsize=8, length=0, pad=4)  # labels at the tile centres; no tick line over the image
    if col_ticks and w * scale / max(len(col_ticks[0]), 1) < 48:
        ax.tick_params(axis="x", labelrotation=90)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig


def save_picture(fig, out: str | Path, pad_px: int = 8) -> tuple[Path, tuple[int, int], tuple[int, int, int, int]]:
    """Save a ``picture_figure`` cropped to its content on whole pixels, so the image keeps its scale.

    The format follows the suffix of ``out`` (.png, .pdf, ...). Returns (path, (width, height) of
    the file in px, (left, top, right, bottom) px of the image inside it).
    """
    import math

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    dpi = fig.dpi
    renderer = FigureCanvasAgg(fig).get_renderer()
    tight = fig.get_tightbbox(renderer)  # inches
    x0, y0 = math.floor(tight.x0 * dpi) - pad_px, math.floor(tight.y0 * dpi) - pad_px
    x1, y1 = math.ceil(tight.x1 * dpi) + pad_px, math.ceil(tight.y1 * dpi) + pad_px
    fig.savefig(out, dpi=dpi, bbox_inches=Bbox([[x0 / dpi, y0 / dpi], [x1 / dpi, y1 / dpi]]))
    box = fig.axes[0].get_window_extent(renderer)  # display px, origin at the bottom left of the figure
    image_box = (round(box.x0) - x0, y1 - round(box.y1), round(box.x1) - x0, y1 - round(box.y0))
    return out, (x1 - x0, y1 - y0), image_box


def _who(model, dataset: str | None) -> str:
    return (f"{model_label(type(model).__name__)}, N_z = {latent_dim_of(model)}, {dataset_name(dataset)},"
            f" after {int(getattr(model, 'samples_seen', 0)):,} training samples")


def _tile_centres(count: int, size: int) -> list[float]:
    return [k * size + (size - 1) / 2 for k in range(count)]


def samples_figure(model, n: int = 100, seed: int = 0, dataset: str | None = None, scale: int = PIXEL_SCALE):
    """``sample_grid(model, n, seed)`` titled with what it is, the model, N_z, data set and n."""
    grid = sample_grid(model, n, seed)
    rows, cols = square_shape(n)
    title = (f"{n} random samples ({rows} x {cols} grid): decoder means E[x|z], z ~ N(0, I), seed {seed}\n"
             + _who(model, dataset))
    return picture_figure(grid, title, scale=scale)


def reconstructions_figure(model, x, n: int = 10, dataset: str | None = None, source: str = "the test split",
                           scale: int = PIXEL_SCALE):
    """``reconstruction_grid(model, x, n)`` titled, its rows labelled data (top) and reconstruction (bottom).

    ``source`` names where ``x`` comes from in the title, e.g. "the test split (n = 10,000 datapoints)".
    """
    grid = reconstruction_grid(model, x, n)
    shown, h = min(n, len(x)), grid.shape[0] // 2
    title = (f"Reconstructions of the first {shown} images of {source}\n"
             f"decoder mean E[x|z] at z = the encoder mean; {_who(model, dataset)}")
    labels = ["data", "reconstruction"]
    return picture_figure(grid, title, scale=scale, row_ticks=(_tile_centres(2, h), labels))


def manifold_figure(model, n: int = 20, dataset: str | None = None, lo: float = MANIFOLD_RANGE[0],
                    hi: float = MANIFOLD_RANGE[1], scale: int = PIXEL_SCALE):
    """``manifold_grid(model, n, lo, hi)`` titled, with the z values of its rows (z_1) and columns (z_2) as ticks."""
    grid = manifold_grid(model, n, lo, hi)
    z = manifold_latents(n, lo, hi)[::n, 0].tolist()  # the n values of z_1 (and of z_2)
    h, w = grid.shape[0] // n, grid.shape[1] // n
    labels = [f"{round(v, 2) + 0.0:.2f}" for v in z]  # + 0.0: no "-0.00"
    title = (f"Figure 4: learned 2-D manifold, {n} x {n} decoder means E[x|z]\n{_who(model, dataset)}\n"
             f"z = inverse Gaussian CDF of an evenly spaced grid on [{lo}, {hi}]^2")
    return picture_figure(grid, title, scale=scale, row_ticks=(_tile_centres(n, h), labels),
                          col_ticks=(_tile_centres(n, w), labels), ylabel="z_1 (rows)", xlabel="z_2 (columns)")
