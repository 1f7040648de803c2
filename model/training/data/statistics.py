"""Per-class pixel counts of a split, for class-balanced losses (one pass over the label files)."""

from __future__ import annotations

import numpy as np
import torch

from .layouts import SegDataset
from .reading import read_label


def class_pixel_counts(dataset: SegDataset, num_classes: int) -> torch.Tensor:
    """2 x C: pixels of each class, and pixels of the images in which that class appears."""
    counts = np.zeros((2, num_classes), dtype=np.int64)
    for _, seg in dataset.pairs:
        label = read_label(seg, dataset.reduce_zero_label)
        hist = np.bincount(label.ravel(), minlength=256)[:num_classes]
        counts[0] += hist
        counts[1] += np.where(hist > 0, label.size, 0)
    return torch.from_numpy(counts)
