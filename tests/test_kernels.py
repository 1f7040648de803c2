"""The Triton kernels against PyTorch (GPU only; the CPU paths *are* the PyTorch references)."""

from __future__ import annotations

import pytest
import torch

from model.accel.kernels import (
    concat_channels,
    depthwise3x3_reference,
    depthwise3x3_relu,
    depthwise3x3_relu_and_mean,
    max_pool3x3s2,
    max_pool3x3s2_reference,
    normalize_pixels,
    normalize_pixels_reference,
    resize_concat,
    spread_borders,
    spread_borders_reference,
    triton,
    upsample_argmax,
    upsample_argmax_reference,
)

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
@pytest.mark.parametrize("classes", [19, 150, 6])
def test_triton_kernel_matches_pytorch(align_corners, channels_last, classes):
    """Class counts: Cityscapes, ADE20K and a few classes."""
    logits = torch.randn(2, classes, 64, 96, device="cuda")
    if channels_last:
        logits = logits.contiguous(memory_format=torch.channels_last)
    got = upsample_argmax(logits, (257, 381), align_corners)
    ref = upsample_argmax_reference(logits, (257, 381), align_corners)
    assert (got == ref).float().mean().item() > 0.9999


def test_depthwise_cpu_path_is_conv_bias_relu():
    x, weight, bias = torch.randn(1, 6, 11, 17), torch.randn(6, 1, 3, 3), torch.randn(6)
    got = depthwise3x3_relu(x, weight, bias, dilation=4)
    expected = torch.relu(torch.nn.functional.conv2d(x, weight, bias, padding=4, dilation=4, groups=6))
    assert torch.equal(got, expected)


@needs_gpu
@pytest.mark.parametrize("dilation", [1, 12, 36])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_depthwise_matches_cudnn(dilation, dtype):
    """Odd sizes and a channel count that is no multiple of the block, so every mask is exercised."""
    x = torch.randn(2, 200, 45, 77, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    weight, bias = torch.randn(200, 1, 3, 3, device="cuda", dtype=dtype), torch.randn(200, device="cuda", dtype=dtype)
    got = depthwise3x3_relu(x, weight, bias, dilation)
    ref = depthwise3x3_reference(x.float(), weight.float(), bias.float(), dilation)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(got.float(), ref, atol=1e-2 if dtype == torch.float16 else 1e-4, rtol=1e-2)
    with_mean, mean = depthwise3x3_relu_and_mean(x, weight, bias, dilation)
    assert torch.equal(with_mean, got)
    assert mean.shape == (2, 200) and torch.allclose(mean, x.float().mean(dim=(2, 3)), atol=1e-5, rtol=1e-4)


def test_depthwise_and_mean_cpu_path():
    x, weight, bias = torch.randn(2, 6, 11, 17), torch.randn(6, 1, 3, 3), torch.randn(6)
    out, mean = depthwise3x3_relu_and_mean(x, weight, bias, dilation=2)
    assert torch.equal(out, depthwise3x3_relu(x, weight, bias, dilation=2))
    assert torch.equal(mean, x.mean(dim=(2, 3)))


def _resize_concat_reference(x, skip, align_corners):
    up = torch.nn.functional.interpolate(x, size=skip.shape[2:], mode="bilinear", align_corners=align_corners)
    return torch.cat([up, skip], dim=1)


def test_resize_concat_cpu_path():
    x, skip = torch.randn(2, 5, 7, 9), torch.randn(2, 3, 26, 35)
    assert torch.equal(resize_concat(x, skip, False), _resize_concat_reference(x, skip, False))


@needs_gpu
@pytest.mark.parametrize("align_corners", [False, True])
def test_triton_resize_concat_matches_pytorch(align_corners):
    """Channel count no multiple of the block; output size no multiple of the input's."""
    x = torch.randn(2, 200, 33, 65, device="cuda").contiguous(memory_format=torch.channels_last)
    skip = torch.randn(2, 48, 129, 257, device="cuda").contiguous(memory_format=torch.channels_last)
    got = resize_concat(x, skip, align_corners)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # fp32 rounding: PyTorch's and our interpolation weights differ in the last bits (up to ~2e-5 seen)
    assert torch.allclose(got, _resize_concat_reference(x, skip, align_corners), atol=1e-4)
    padded = resize_concat(x, skip, align_corners, channels=256)  # zero channels after the 248
    assert torch.allclose(padded[:, :248], got, atol=1e-4) and not padded[:, 248:].any()


def test_spread_borders_cpu_path_copies_first_middle_last_rows_and_columns():
    small = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    out = spread_borders(small, (4, 5))
    assert torch.equal(out[0, 1], torch.tensor([[9, 10, 10, 10, 11], [12, 13, 13, 13, 14], [12, 13, 13, 13, 14], [15, 16, 16, 16, 17]]).float())
    assert torch.equal(spread_borders(small[:, :, :1, :2], (1, 2)), small[:, :, :1, :2])


@needs_gpu
@pytest.mark.parametrize("size", [(45, 77), (1, 9), (2, 1)])
def test_triton_spread_borders_matches_the_region_copies(size):
    small = torch.randn(2, 200, min(size[0], 3), min(size[1], 3), device="cuda", dtype=torch.float16)
    got = spread_borders(small, size)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, spread_borders_reference(small, size))


def test_max_pool_cpu_path_is_pytorchs():
    x = torch.randn(2, 5, 9, 12)
    assert torch.equal(max_pool3x3s2(x), torch.nn.functional.max_pool2d(x, 3, 2, 1))


@needs_gpu
@pytest.mark.parametrize("shape", [(2, 64, 45, 77), (1, 200, 2, 1), (3, 8, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_max_pool_matches_pytorch(shape, dtype):
    """Odd and tiny sizes (windows cut by the padding on every side), channels no multiple of the block."""
    x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    got = max_pool3x3s2(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, max_pool3x3s2_reference(x))


MEAN, STD = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])


def test_normalize_cpu_path_is_mean_std_then_zero_channels():
    pixels = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    out = normalize_pixels(pixels, MEAN, STD, torch.float16, channels=8)
    assert out.shape == (2, 8, 5, 7) and out.dtype == torch.float16
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (pixels.permute(0, 3, 1, 2).float() - MEAN.view(1, 3, 1, 1)) / STD.view(1, 3, 1, 1)
    assert torch.equal(out[:, :3], expected.half()) and not out[:, 3:].any()
    assert torch.equal(normalize_pixels(pixels, MEAN, STD), expected)  # fp32, 3 channels: unchanged


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 8])
@pytest.mark.parametrize("shape", [(2, 37, 51), (1, 1, 1), (3, 64, 96)])
def test_triton_normalize_matches_pytorch_exactly(dtype, channels, shape):
    pixels = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, device="cuda")
    mean, std = MEAN.cuda(), STD.cuda()
    got = normalize_pixels(pixels, mean, std, dtype, channels)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, normalize_pixels_reference(pixels, mean, std, dtype, channels))


def test_resize_concat_pads_with_zero_channels_on_cpu():
    x, skip = torch.randn(1, 6, 5, 7), torch.randn(1, 3, 10, 14)
    out = resize_concat(x, skip, False, channels=16)
    assert out.shape == (1, 16, 10, 14) and torch.equal(out[:, :9], resize_concat(x, skip, False))
    assert not out[:, 9:].any()



def test_concat_cpu_path_is_torch_cat():
    tensors = [torch.randn(2, c, 5, 7) for c in (3, 8, 1)]
    assert torch.equal(concat_channels(tensors), torch.cat(tensors, 1))


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_concat_equals_torch_cat(dtype):
    """Channel counts under, at and over the block, and not multiples of 8."""
    tensors = [torch.randn(2, c, 33, 65, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
               for c in (12, 128, 300, 5)]  # fmt: skip
    got = concat_channels(tensors)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, torch.cat(tensors, 1))
