"""Label maps as palette PNGs (pixel value = class index, shown in colour) and colour overlays."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def palette_image(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A mode-"P" image whose indices are the labels; classes beyond the palette show black."""
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="P")
    flat = [c for rgb in palette for c in rgb][: 256 * 3]
    image.putpalette(flat + [0] * (256 * 3 - len(flat)))
    return image


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return lut[labels]


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """RGB blend of the image and its class colours; `alpha` is the colours' weight."""
    blend = image.astype(np.float32) * (1 - alpha) + colorize(labels, palette).astype(np.float32) * alpha
    return np.clip(blend + 0.5, 0, 255).astype(np.uint8)
