"""The one precision type of the project: what an engine computes in, validated where it is used.

`fp8` means fp16 activations with the ASPP's bottleneck conv in e4m3 (`model.accel.fp8`); it
needs a Hopper GPU and the torch backend. Each engine declares the precisions it can run and
refuses the others with `UnsupportedPrecision` when it loads, naming what it supports.
"""

from __future__ import annotations

from enum import Enum

import torch


class UnsupportedPrecision(ValueError):
    """A precision the engine (or this machine) cannot run."""


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    FP8 = "fp8"

    @property
    def dtype(self) -> torch.dtype:
        """The activations' dtype (fp8 keeps fp16 activations outside its one conv)."""
        return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float16}[self.value]

    @classmethod
    def parse(cls, value: str | Precision, supported: tuple[Precision, ...] | None = None, engine: str = "") -> Precision:
        """``value`` as a Precision, refused with a message naming the choices when it is not one
        of ``supported`` (all by default)."""
        try:
            precision = cls(value)
        except ValueError:
            raise UnsupportedPrecision(f"unknown precision {value!r}; choose from {', '.join(p.value for p in cls)}") from None
        if supported is not None and precision not in supported:
            names = ", ".join(p.value for p in supported)
            raise UnsupportedPrecision(f"{engine or 'this engine'} runs {names}, not {precision.value}")
        return precision
