"""mmseg's `PhotoMetricDistortion` as tensor ops, so it runs on the GPU as well as in CPU workers.

mmseg works on uint8 BGR arrays through OpenCV; here images are float tensors holding uint8 values
(C x H x W, RGB). Each step quantises exactly where mmseg's does (`convert` truncates to uint8,
HSV is OpenCV's 8-bit HSV: H in [0, 180), S and V in [0, 255], rounded), so results agree with
mmseg's to within OpenCV's fixed-point rounding (a level or two, see tests/test_data_photometric.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PhotometricParams:
    """One draw of the distortion; None means that step is skipped (each has probability 0.5)."""

    brightness: float | None
    contrast: float | None
    contrast_first: bool
    saturation: float | None
    hue: int | None


def sample_photometric(
    rng: random.Random,
    brightness_delta: int = 32,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: int = 18,
) -> PhotometricParams:
    """Draws in mmseg's order; hue's upper bound is exclusive as with `np.random.randint`."""
    brightness = rng.uniform(-brightness_delta, brightness_delta) if rng.random() < 0.5 else None
    contrast_first = rng.random() < 0.5
    contrast = rng.uniform(*contrast_range) if rng.random() < 0.5 else None
    saturation = rng.uniform(*saturation_range) if rng.random() < 0.5 else None
    hue = rng.randrange(-hue_delta, hue_delta) if rng.random() < 0.5 else None
    return PhotometricParams(brightness, contrast, contrast_first, saturation, hue)


def _convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    # mmseg: (img.astype(float32) * alpha + beta).clip(0, 255).astype(uint8) -- truncation.
    return (x * alpha + beta).clamp_(0, 255).floor_()


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit RGB->HSV on a 3 x H x W float tensor of uint8 values."""
    r, g, b = img.unbind(0)
    v, _ = img.max(0)
    mn, _ = img.min(0)
    diff = v - mn
    safe = torch.where(diff > 0, diff, torch.ones_like(diff))
    h = torch.where(v == r, (g - b) / safe, torch.where(v == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(diff > 0, h * 30.0, torch.zeros_like(h))  # 60 degrees per unit, halved for 8 bit
    h = torch.round(torch.where(h < 0, h + 180.0, h)) % 180
    s = torch.round(torch.where(v > 0, diff * 255.0 / torch.where(v > 0, v, torch.ones_like(v)), torch.zeros_like(v)))
    return torch.stack([h, s, v])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit HSV->RGB (float conversion, then rounding to uint8 values)."""
    h, s, v = hsv.unbind(0)
    h6, s, v = h * (2.0 / 60.0), s / 255.0, v / 255.0
    out = []
    for n in (5.0, 3.0, 1.0):  # closed form of the six-sector table: R, G, B
        k = (n + h6) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.round(torch.stack(out) * 255.0).clamp_(0, 255)


def photometric_distortion(img: torch.Tensor, p: PhotometricParams) -> torch.Tensor:
    """Brightness, contrast (first or last), saturation, hue: mmseg's sequence and quantisation."""
    if p.brightness is not None:
        img = _convert(img, beta=p.brightness)
    if p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    if p.saturation is not None:
        hsv = rgb_to_hsv(img)
        hsv[1] = _convert(hsv[1], alpha=p.saturation)
        img = hsv_to_rgb(hsv)
    if p.hue is not None:
        hsv = rgb_to_hsv(img)
        hsv[0] = (hsv[0] + p.hue) % 180
        img = hsv_to_rgb(hsv)
    if not p.contrast_first and p.contrast is not None:
        img = _convert(img, alpha=p.contrast)
    return img
