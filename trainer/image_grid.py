"""Sample image grids: a batch of uint8 HWC images tiled into one PNG (one row per prompt group)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def tile_images(images: torch.Tensor | np.ndarray, columns: int | None = None, padding: int = 2) -> np.ndarray:
    """uint8 [B, H, W, 3] -> one uint8 [rows*(H+p)-p, cols*(W+p)-p, 3] image (white padding)."""
    array = images.cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if array.ndim != 4 or array.dtype != np.uint8:
        raise ValueError(f"expected uint8 [B, H, W, C] images, got {array.dtype} {array.shape}")
    count, height, width, channels = array.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    grid = np.full((rows * (height + padding) - padding, columns * (width + padding) - padding, channels), 255,
                   dtype=np.uint8)
    for index in range(count):
        row, col = divmod(index, columns)
        top, left = row * (height + padding), col * (width + padding)
        grid[top: top + height, left: left + width] = array[index]
    return grid


def save_grid(images: torch.Tensor | np.ndarray, path: str | Path, columns: int | None = None) -> Path:
    """Write the tiled grid as a PNG (parent directories created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(tile_images(images, columns)).save(path, format="PNG")
    return path
