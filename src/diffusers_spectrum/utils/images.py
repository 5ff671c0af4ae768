"""Image grids for validation samples, sample folders and logs."""

import math

import numpy as np
import torch


__all__ = ["image_grid"]


def image_grid(images: torch.Tensor, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """`(B, 3, H, W)` in [-1, 1] -> one `(rows*(H+p)+p, nrow*(W+p)+p, 3)` uint8 grid (white padding)."""
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid: images must be (B, 1 or 3, H, W), got {tuple(images.shape)}.")
    batch, _, height, width = images.shape
    nrow = nrow or math.ceil(math.sqrt(batch))
    rows = math.ceil(batch / nrow)
    array = ((images.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    array = np.repeat(array, 3 // array.shape[1], axis=1).transpose(0, 2, 3, 1)  # (B, H, W, 3)
    grid = np.full((rows * (height + padding) + padding, nrow * (width + padding) + padding, 3), 255, np.uint8)
    for i, image in enumerate(array):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        grid[top : top + height, left : left + width] = image
    return grid
