"""The config's test pipeline: decode to RGB, keep-ratio resize, normalise.

Matches mmseg's `LoadImageFromFile` + `Resize(keep_ratio=True)` + `SegDataPreProcessor`: cv2's
bilinear resize with mmcv's size rounding, mean/std on RGB.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps

from .configs import ModelConfig
from .kernels import normalize_pixels

ORIENTATION = 0x0112  # the EXIF tag


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any PIL mode, upright per EXIF (as cv2.imread shows it)."""
    if image.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even when upright (~8 ms at 2 Mpx)
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit scans to 8 bits by their top byte, as cv2's IMREAD_COLOR does.
        arr = np.asarray(image, dtype=np.uint32) >> 8
        return np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        arr = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGBA" if "transparency" in image.info else image.mode).convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _complete_jpeg(data: bytes) -> bool:
    """Ends with the end-of-image marker (trailing NUL padding allowed). libjpeg pads a truncated
    stream with grey and only warns, so cv2 would serve it; such streams go to PIL, which refuses
    them."""
    return data.rstrip(b"\0").endswith(b"\xff\xd9")


def load_image(source: bytes | str | Path | Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB. Complete RGB and greyscale JPEGs go through cv2.imdecode: the pixels are
    PIL's (both are libjpeg-turbo with the same settings; tests check it, EXIF orientations
    included) in half to two thirds of the time for a 2048x1024 photo (11.8 ms on the H100
    host, where PIL took 20-29 ms), as PIL's RGB -> numpy copy costs more than its decode.
    Everything else (CMYK, PNG, WebP, ...) goes through PIL."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and _complete_jpeg(data):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return to_rgb(image)


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


def test_resize(image: np.ndarray, config: ModelConfig) -> np.ndarray:
    return resize_image(image, rescale_size((image.shape[1], image.shape[0]), config.test_scale))


def normalizer(
    config: ModelConfig, device: torch.device | str, dtype: torch.dtype = torch.float32, channels: int = 3
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`normalize` with mean and std placed on `device` once (no host-to-device copy per call,
    so a CUDA graph can capture it), its result cast to `dtype`, channels-last and zero-padded
    to `channels` (for `model.fast`'s networks, whose first conv takes 8)."""
    mean = torch.tensor(config.mean, device=device)
    std = torch.tensor(config.std, device=device)
    return functools.partial(normalize_pixels, mean=mean, std=std, dtype=dtype, channels=channels)


def normalize(batch: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 N x H x W x 3 (any device) to normalised float N x 3 x H x W."""
    return normalizer(config, batch.device)(batch)
