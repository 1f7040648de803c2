"""Datasets in mmsegmentation's on-disk layouts and its training augmentation, on any device."""

from .layouts import LAYOUTS, DatasetLayoutError, SegDataset, detect_layout, open_dataset
from .reading import LabelFormatError, read_label
from .stream import TrainBatches
from .transforms import TrainPipeline, augment_batch

__all__ = [
    "LAYOUTS",
    "DatasetLayoutError",
    "LabelFormatError",
    "SegDataset",
    "TrainBatches",
    "TrainPipeline",
    "augment_batch",
    "detect_layout",
    "open_dataset",
    "read_label",
]
