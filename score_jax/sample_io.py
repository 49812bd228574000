"""Sample files: the PNG grid and the uint8 ``samples.npz`` of a batch of images, and the count of
non-finite samples (written as 0).
"""
from __future__ import annotations

import math
import os

import numpy as np


def count_nonfinite(images: np.ndarray) -> int:
    """The number of images (first axis) holding any NaN / inf."""
    x = np.asarray(images)
    return int((~np.isfinite(x.reshape(x.shape[0], -1))).any(axis=1).sum())


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one uint8 (rows x cols) grid image."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = images[i]
    return np.round(np.clip(np.nan_to_num(grid), 0, 1) * 255).astype(np.uint8)


def save_samples(images: np.ndarray, directory: str, *, scale: int = 1,
                 nrow: int | None = None) -> str:
    """Write ``samples.png`` (a grid, nearest-upscaled by ``scale``) and ``samples.npz`` (uint8
    images, as the reference's sample files) into ``directory``; returns the PNG path.
    Non-finite pixels are written as 0 (count them first with `count_nonfinite`). ``nrow``: images
    per grid row (default about sqrt(N); per_class for a grid with one row per class)."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    grid = image_grid(images, nrow=nrow or None)
    pil = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = os.path.join(directory, "samples.png")
    pil.save(path)
    np.savez_compressed(os.path.join(directory, "samples.npz"),
                        samples=np.round(np.clip(np.nan_to_num(images), 0.0, 1.0) * 255
                                         ).astype(np.uint8))
    return path


__all__ = ["count_nonfinite", "image_grid", "save_samples"]
