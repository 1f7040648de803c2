"""mmseg's `PhotoMetricDistortion` as tensor ops, so it runs on the GPU as well as in CPU workers.

mmseg works on uint8 BGR arrays through OpenCV; here images are float tensors holding uint8 values
(C x H x W, RGB). Each step quantises exactly where mmseg's does (`convert` truncates to uint8,
HSV is OpenCV's 8-bit HSV: H in [0, 180), S and V in [0, 255]), so results agree with mmseg's
to within OpenCV's fixed-point rounding (a level here and there, see tests/test_data_photometric.py).
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


def _convert(x: torch.Tensor, alpha: float | torch.Tensor = 1.0, beta: float | torch.Tensor = 0.0) -> torch.Tensor:
    # mmseg: (img.astype(float32) * alpha + beta).clip(0, 255).astype(uint8) -- truncation.
    return (x * alpha + beta).clamp_(0, 255).floor_()


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit RGB->HSV, in its own fixed-point arithmetic (channels at dim -3).

    OpenCV divides through 12-bit reciprocal tables; emulating them exactly matters because a
    hue one step off moves a saturated colour by up to 8 levels on the way back to RGB.
    """
    x = img.to(torch.int64)
    r, g, b = x.unbind(-3)
    v, mn = x.max(-3).values, x.min(-3).values
    diff = v - mn
    sdiv = torch.where(v > 0, torch.round((255 << 12) / v.clamp(min=1).double()), 0).long()
    hdiv = torch.where(diff > 0, torch.round((180 << 12) / (6.0 * diff.clamp(min=1).double())), 0).long()
    s = (diff * sdiv + 2048) >> 12
    num = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (num * hdiv + 2048) >> 12
    h = torch.where(h < 0, h + 180, h)
    return torch.stack([h, s, v], dim=-3).to(img.dtype)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """OpenCV's 8-bit HSV->RGB (float conversion, then truncation to uint8 values).

    OpenCV's vectorised path, which converts all but a row's last few pixels, truncates; its
    scalar tail rounds. Truncation is what an image sees almost everywhere.
    """
    h, s, v = hsv.unbind(-3)
    h6, s, v = h * (2.0 / 60.0), s / 255.0, v / 255.0
    out = []
    for n in (5.0, 3.0, 1.0):  # closed form of the six-sector table: R, G, B
        k = (n + h6) % 6
        out.append(v - v * s * torch.clamp(torch.minimum(k, 4 - k), 0, 1))
    return torch.floor(torch.stack(out, dim=-3) * 255.0).clamp_(0, 255)


def photometric_distortion(imgs: torch.Tensor, params: list[PhotometricParams]) -> torch.Tensor:
    """A batch (N x 3 x H x W) distorted sample by sample, in a fixed number of batched ops.

    Brightness and contrast use identity values (beta 0, alpha 1) for samples that skip them,
    which leaves uint8 values exactly unchanged; the HSV steps, whose round trip is not exact,
    are applied through a per-sample mask instead.
    """

    def column(values: list[float]) -> torch.Tensor:
        return torch.tensor(values, dtype=imgs.dtype).view(-1, 1, 1, 1).to(imgs.device, non_blocking=True)

    def masked(fn, values: list[float | None], img: torch.Tensor) -> torch.Tensor:
        if all(v is None for v in values):
            return img
        hsv = rgb_to_hsv(img)
        changed = hsv_to_rgb(fn(hsv, column([0.0 if v is None else float(v) for v in values])))
        return torch.where(column([v is not None for v in values]) > 0, changed, img)

    def saturate(hsv: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return torch.cat([hsv[:, :1], _convert(hsv[:, 1:2], alpha), hsv[:, 2:]], dim=1)

    def shift_hue(hsv: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        return torch.cat([(hsv[:, :1] + delta) % 180, hsv[:, 1:]], dim=1)

    if any(p.brightness is not None for p in params):
        imgs = _convert(imgs, beta=column([p.brightness or 0.0 for p in params]))
    first = [p.contrast if p.contrast_first else None for p in params]
    last = [None if p.contrast_first else p.contrast for p in params]
    if any(c is not None for c in first):
        imgs = _convert(imgs, alpha=column([1.0 if c is None else c for c in first]))
    imgs = masked(saturate, [p.saturation for p in params], imgs)
    imgs = masked(shift_hue, [p.hue for p in params], imgs)
    if any(c is not None for c in last):
        imgs = _convert(imgs, alpha=column([1.0 if c is None else c for c in last]))
    return imgs
