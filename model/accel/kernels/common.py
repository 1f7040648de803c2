"""Triton, when installed, and the test every kernel's caller makes before taking the Triton path."""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: every kernel's PyTorch path runs
    triton = tl = None

#: Triton's interpreter (``TRITON_INTERPRET=1``) runs the kernels on CPU tensors, in numpy: far too
#: slow to serve, but it checks their indexing and masks where there is no GPU
#: (tests/test_kernels_interpreted.py).
INTERPRETED = triton is not None and os.environ.get("TRITON_INTERPRET") == "1"


def on_kernel_device(t: torch.Tensor) -> bool:
    """Whether the Triton kernels can take ``t``'s device: CUDA, or any under the interpreter."""
    return triton is not None and (t.is_cuda or INTERPRETED)


def _on_triton(x: torch.Tensor) -> bool:
    """Whether the channels-last kernels can take ``x``; otherwise their PyTorch path runs."""
    return on_kernel_device(x) and x.stride(1) == 1
