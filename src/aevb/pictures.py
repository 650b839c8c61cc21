"""Pictures drawn from a model: Figure 4's manifold, samples (Figure 5's panels), reconstructions.

Every builder returns a numpy array with values in [0, 1] (2-D for grey images), so the
figures CLI saves it and aevb-train logs the same picture to wandb
(e.g. ``wandb.Image(sample_grid(model, 100))``). Tiling is torchvision's ``make_grid``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torchvision.utils import make_grid

from aevb.errors import AevbError, require_positive_int
from aevb.evaluation import eval_mode

MANIFOLD_RANGE = (0.05, 0.95)  # open unit square: the inverse Gaussian CDF is infinite at 0 and 1


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
