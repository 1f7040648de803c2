"""The JSON bodies /segment answers with: pydantic models, so each is also the OpenAPI schema that
clients and tests/test_schemathesis.py validate responses against. Shared by the one-image route
(``service.api``) and the several-images answer (``service.multi_image``)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel

from model.pipeline import render


class ErrorBody(BaseModel):
    error: str
    detail: str


class ClassStat(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float


class Timing(BaseModel):
    queue_ms: float
    inference_ms: float
    total_ms: float


class RLEMask(BaseModel):
    encoding: Literal["rle"]
    order: Literal["row-major"]
    size: list[int]
    values: list[int]
    counts: list[int]


class SegmentJSON(BaseModel):
    model: str
    width: int
    height: int
    classes: list[ClassStat]
    timing: Timing
    mask: RLEMask | None = None


class ImageSegment(BaseModel):
    """One image of a several-images request, answered: the statistics of ``format=json`` plus the
    label map or overlay of the requested format, base64-encoded (a JSON body cannot carry bytes)."""

    index: int
    filename: str | None = None
    width: int
    height: int
    classes: list[ClassStat]
    timing: Timing
    batch_size: int  # images in the model batch it ran in (X-Batch-Size of a one-image answer)
    mask: RLEMask | None = None
    png_base64: str | None = None  # format=png: the palette PNG label map
    raw_base64: str | None = None  # format=raw: height x width label bytes, row-major
    jpeg_base64: str | None = None  # format=overlay: the overlay JPEG


class ImageFailure(BaseModel):
    """One image of a several-images request that was refused: the error body it would have got
    alone, plus its status."""

    index: int
    filename: str | None = None
    status: int
    error: str
    detail: str


class MultiSegmentJSON(BaseModel):
    model: str
    results: list[ImageSegment | ImageFailure]


class MultiFailure(ErrorBody):
    """Every image of a several-images request was refused: the usual error body plus each image's."""

    results: list[ImageFailure]


def label_stats(cfg, labels: np.ndarray, rle: bool) -> dict:
    """``width``, ``height``, ``classes`` (the classes present, with pixel counts) and, when asked,
    the run-length ``mask`` of one label map: the part of a JSON answer that describes the image."""
    counts = render.class_histogram(labels, cfg.num_classes)
    total = int(labels.size)
    return {
        "width": labels.shape[1],
        "height": labels.shape[0],
        "classes": [
            ClassStat(id=i, name=name, pixels=int(n), fraction=int(n) / total)
            for i, (name, n) in enumerate(zip(cfg.dataset.classes, counts))
            if n
        ],
        "mask": render.encode_rle(labels) if rle else None,
    }
