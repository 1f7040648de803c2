"""The config's test resize, as mmseg's `Resize(scale, keep_ratio=True)` does it.

cv2's bilinear resize with mmcv's size rounding (`rescale_size` is `mmcv.rescale_size`).
"""

from __future__ import annotations

import cv2
import numpy as np


def rescale_size(size: tuple[int, int], scale: tuple[int, int] | float) -> tuple[int, int]:
    """mmcv.rescale_size: (w, h) scaled to fit `scale` = (long, short) edges, or by a factor."""
    w, h = size
    if isinstance(scale, (int, float)):
        factor = float(scale)
    else:
        factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(w * factor + 0.5), int(h * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize to (w, h); a no-op when the size already matches."""
    if (image.shape[1], image.shape[0]) == tuple(size):
        return image
    return cv2.resize(image, tuple(size), interpolation=cv2.INTER_LINEAR)
