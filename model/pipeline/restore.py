"""Back to the image's own size: the last step before rendering. Two modes, chosen by the caller.

- `restore_labels` (serving: the service, the ONNX/TensorRT engines): the network ran on a
  bucket (the resized image padded, `model.pipeline.buckets`), produced labels there; crop the
  padding and scale the label map to the original size with nearest neighbour. Labels are
  categories, so nothing is interpolated; only uint8 labels cross the device boundary.
- `restore_logits` (mmseg-exact: `Segmenter`, the predict CLI, evaluation): bilinear resize of
  the logits to the original size, then argmax, as mmseg's `EncoderDecoder.postprocess_result`.
  It needs C x H x W floats at full size per image, so serving does not use it.
The two agree wherever the original size is the resized size (e.g. every 480x360 CamVid frame for
the built-in model) and can differ by a pixel on class boundaries otherwise.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .buckets import Prepared


def restore_labels(labels: np.ndarray, prepared: Prepared) -> np.ndarray:
    """Bucket-sized label map -> label map at the original image size (nearest neighbour)."""
    cropped = labels[: prepared.resized[1], : prepared.resized[0]]
    if prepared.resized == prepared.original:
        return np.ascontiguousarray(cropped)
    return cv2.resize(cropped, prepared.original, interpolation=cv2.INTER_NEAREST)


def restore_logits(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """N x C x h x w logits -> N x C x H x W at ``size`` = (H, W), bilinear (mmseg's resize)."""
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)
