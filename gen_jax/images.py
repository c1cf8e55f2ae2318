"""Image grids as arrays and PNG files: how every sample, reconstruction and map is written."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def grid(images: np.ndarray, padding: int = 2) -> np.ndarray:
    """Tile images laid out as (rows, columns, H, W, C), values in [0, 1], into one uint8 image.

    A flat batch (N, H, W, C) is laid out in a near-square grid."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim == 4:
        columns = math.ceil(math.sqrt(len(images)))
        missing = -len(images) % columns
        images = np.concatenate([images, np.ones((missing, *images.shape[1:]), np.float32)])
        images = images.reshape(-1, columns, *images.shape[1:])
    rows, columns, height, width, channels = images.shape
    step_y, step_x = height + padding, width + padding
    canvas = np.ones((rows * step_y + padding, columns * step_x + padding, channels), np.float32)
    for row in range(rows):
        for column in range(columns):
            y, x = padding + row * step_y, padding + column * step_x
            canvas[y : y + height, x : x + width] = images[row, column]
    return np.round(canvas * 255).astype(np.uint8)


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write a uint8 image (H, W, C) with C in {1, 3} as PNG, creating the directory."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    return path


def save_pngs(samples: np.ndarray, folder: str | Path) -> Path:
    """Write each image (N, H, W, C) in [0, 1] as folder/000000.png, ... (uint8, rounded)."""
    folder = Path(folder)
    levels = np.round(np.clip(np.asarray(samples, np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    for i, image in enumerate(levels):
        save_png(image, folder / f"{i:06d}.png")
    return folder


def figure(layout: np.ndarray, title: str = "", inches_per_pixel: float = 0.025):
    """A matplotlib figure showing `grid(layout)` (for notebooks), greyscale for one channel."""
    import matplotlib.pyplot as plt

    picture = grid(layout)
    height, width = picture.shape[:2]
    fig, axes = plt.subplots(figsize=(width * inches_per_pixel, height * inches_per_pixel + 0.4))
    if picture.shape[-1] == 1:
        axes.imshow(picture[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(picture)
    axes.set_title(title)
    axes.axis("off")
    fig.tight_layout()
    return fig
