"""The batch and image-size range a TensorRT engine is built for (its optimization profile).

One value object serves the builder (`IOptimizationProfile.set_shape`), the `trtexec` fallback
command, the engine's sidecar and the serving backend, which splits batches larger than
`max_batch` and rejects image sizes outside the range; so all of them agree on the range.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.pipeline.buckets import InputPolicy

_HW = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_hw(text: str) -> tuple[int, int]:
    """"360x480" -> (360, 480): height first, as the CLI documents it."""
    m = _HW.match(text)
    if not m:
        raise ValueError(f"expected HEIGHTxWIDTH such as 360x480, got {text!r}")
    h, w = int(m[1]), int(m[2])
    if h < 1 or w < 1:
        raise ValueError(f"image size must be positive, got {text!r}")
    return h, w


def hw_arg(text: str) -> tuple[int, int]:
    """`parse_hw` as an argparse `type=`, so bad sizes get argparse's usage message."""
    try:
        return parse_hw(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


@dataclass(frozen=True)
class ShapeProfile:
    """min <= opt <= max for the batch size and, element-wise, for (height, width)."""

    min_batch: int
    opt_batch: int
    max_batch: int
    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    def __post_init__(self) -> None:
        if self.min_batch < 1:
            raise ValueError(f"min batch must be >= 1, got {self.min_batch}")
        if not self.min_batch <= self.opt_batch <= self.max_batch:
            raise ValueError(
                f"batch sizes must satisfy min <= opt <= max, got {self.min_batch}/{self.opt_batch}/{self.max_batch}"
            )
        for axis, name in enumerate(("height", "width")):
            lo, mid, hi = self.min_hw[axis], self.opt_hw[axis], self.max_hw[axis]
            if lo < 1 or not lo <= mid <= hi:
                raise ValueError(f"{name}s must satisfy 1 <= min <= opt <= max, got {lo}/{mid}/{hi}")

    @classmethod
    def covering(cls, policy: InputPolicy, min_batch: int, opt_batch: int, max_batch: int) -> ShapeProfile:
        """The smallest size range holding every bucket `policy` pads images into, so the engine
        accepts whatever the server batches; opt is the landscape box, where most images land."""
        buckets = policy.all_buckets()  # (width, height)
        heights, widths = [h for _, h in buckets], [w for w, _ in buckets]
        opt_w, opt_h = policy.full_buckets()[0]
        return cls(min_batch, opt_batch, max_batch, (min(heights), min(widths)), (opt_h, opt_w), (max(heights), max(widths)))

    def shapes(self, channels: int = 3) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) NCHW input shapes."""
        return tuple(
            (b, channels, *hw)
            for b, hw in ((self.min_batch, self.min_hw), (self.opt_batch, self.opt_hw), (self.max_batch, self.max_hw))
        )

    def accepts_hw(self, hw: tuple[int, int]) -> bool:
        return all(lo <= v <= hi for lo, v, hi in zip(self.min_hw, hw, self.max_hw))

    def to_json(self) -> dict:
        return {
            "batch": [self.min_batch, self.opt_batch, self.max_batch],
            "min_hw": list(self.min_hw),
            "opt_hw": list(self.opt_hw),
            "max_hw": list(self.max_hw),
        }

    @classmethod
    def from_json(cls, data: dict) -> ShapeProfile:
        lo, mid, hi = data["batch"]
        return cls(lo, mid, hi, tuple(data["min_hw"]), tuple(data["opt_hw"]), tuple(data["max_hw"]))
