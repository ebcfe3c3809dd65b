"""Image grids and PNG output for samples."""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np


def make_grid(images, ncols: Optional[int] = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """uint8 images (B, H, W, 3) -> one (rows*(H+pad)+pad, cols*(W+pad)+pad, 3) uint8 image,
    filled row by row; ``ncols`` defaults to ceil(sqrt(B))."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"make_grid expects images (B, H, W, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        raise ValueError(f"make_grid expects uint8 images, got {images.dtype}")
    b, h, w, _ = images.shape
    if b == 0:
        raise ValueError("make_grid got no images")
    ncols = ncols or math.ceil(math.sqrt(b))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(b / ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, 3), pad_value, np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        grid[y:y + h, x:x + w] = img
    return grid


def save_png(path: str, image) -> None:
    """Write atomically (temp file + rename) so an interrupted run never leaves a truncated PNG
    that a rerun would mistake for a finished sample."""
    from PIL import Image
    tmp = path + ".tmp.png"
    Image.fromarray(np.asarray(image, np.uint8)).save(tmp)
    os.replace(tmp, path)


def save_npy(path: str, array) -> None:
    tmp = path + ".tmp.npy"
    np.save(tmp, np.asarray(array))
    os.replace(tmp, path)
