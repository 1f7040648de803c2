"""Decode a label map as mmseg's LoadAnnotations does (images use `model.pipeline.decode.load_image`).

Labels go through Pillow with no conversion, so palette PNGs (VOC, CamVid exports) yield their
indices rather than colours; `reduce_zero_label` maps 0 -> 255 and shifts the rest down by one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


class LabelFormatError(ValueError):
    """A label map that is not a single-channel index image."""


def read_label(path: str | Path, reduce_zero_label: bool = False) -> np.ndarray:
    with Image.open(path) as im:
        label = np.array(im)
    if label.ndim != 2 or label.dtype != np.uint8:
        raise LabelFormatError(f"{path}: expected a single-channel 8-bit label map, got {label.dtype} {label.shape}")
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    return label
