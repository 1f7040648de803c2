"""Triton, when installed, and the test every kernel's caller makes before taking the Triton path."""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: every kernel's PyTorch path runs
    triton = tl = None


def _on_triton(x: torch.Tensor) -> bool:
    """Whether the channels-last kernels can take ``x``; otherwise their PyTorch path runs."""
    return triton is not None and x.is_cuda and x.stride(1) == 1

