"""The fused upsample + argmax kernel against PyTorch (GPU only; the CPU path *is* PyTorch)."""

from __future__ import annotations

import pytest
import torch

from model.kernels import triton, upsample_argmax, upsample_argmax_reference

needs_gpu = pytest.mark.skipif(
    triton is None or not torch.cuda.is_available(), reason="needs a CUDA GPU and Triton (run on the GPU box)"
)


def test_cpu_path_is_interpolate_then_argmax():
    logits = torch.randn(2, 5, 9, 13)
    labels = upsample_argmax(logits, (36, 52), align_corners=False)
    expected = torch.nn.functional.interpolate(logits, (36, 52), mode="bilinear").argmax(1)
    assert labels.dtype == torch.uint8 and torch.equal(labels.long(), expected)


@needs_gpu
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("channels_last", [False, True])
def test_triton_kernel_matches_pytorch(align_corners, channels_last):
    logits = torch.randn(2, 19, 64, 96, device="cuda")
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    got = upsample_argmax(logits, (257, 381), align_corners)
    ref = upsample_argmax_reference(logits, (257, 381), align_corners)
    assert (got == ref).float().mean().item() > 0.9999
