"""The Triton kernels against PyTorch (GPU only; the CPU paths *are* the PyTorch references)."""

from __future__ import annotations

import pytest
import torch

from model.kernels import (
    depthwise3x3_reference,
    depthwise3x3_relu,
    max_pool3x3s2,
    max_pool3x3s2_reference,
    normalize_pixels,
    normalize_pixels_reference,
    resize_concat,
    separable_relu,
    separable_relu_reference,
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


def _separable_weights(c: int, c_out: int, device: str = "cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(c)
    taps, dw_bias = torch.randn(9, c, generator=g) / 3, torch.randn(c, generator=g)
    pw_kn, pw_bias = torch.randn(c, c_out, generator=g) / c**0.5, torch.randn(c_out, generator=g)
    return [t.to(device, dtype) for t in (taps, dw_bias, pw_kn, pw_bias)]


def test_separable_cpu_path_is_depthwise_then_pointwise_into_the_slice():
    x = torch.randn(2, 6, 9, 11)
    taps, dw_bias, pw_kn, pw_bias = _separable_weights(6, 5)
    depthwise = torch.relu(torch.nn.functional.conv2d(x, taps.t().reshape(6, 1, 3, 3), dw_bias, 1, 2, 2, 6))
    expected = torch.relu(torch.einsum("nchw,co->nohw", depthwise, pw_kn) + pw_bias.view(1, 5, 1, 1))
    concat = torch.zeros(2, 15, 9, 11)
    separable_relu(x, taps, dw_bias, 2, pw_kn, pw_bias, out=concat[:, 5:10])
    assert torch.allclose(concat[:, 5:10], expected, atol=1e-5)
    assert not concat[:, :5].any() and not concat[:, 10:].any()


@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("c", "c_out", "size", "dilation"), [
    (64, 512, (33, 70), 12),  # ASPP-like: dilation past the map's height
    (140, 128, (17, 9), 1),  # channels and pixels no multiple of the tiles
    (40, 24, (5, 300), 3),  # fewer outputs than a tile
])  # fmt: skip
def test_triton_separable_matches_two_convs(dtype, c, c_out, size, dilation):
    x = torch.randn(2, c, *size, device="cuda").to(dtype).contiguous(memory_format=torch.channels_last)
    weights = _separable_weights(c, c_out, "cuda", dtype)
    depthwise = depthwise3x3_reference(x.float(), weights[0].float().t().reshape(c, 1, 3, 3), weights[1].float(), dilation)
    ref = torch.relu(torch.einsum("nchw,co->nohw", depthwise.to(dtype).float(), weights[2].float()) + weights[3].float().view(1, -1, 1, 1))
    concat = torch.zeros(2, c_out + 16, *size, device="cuda", dtype=dtype).contiguous(memory_format=torch.channels_last)
    separable_relu(x, weights[0], weights[1], dilation, weights[2], weights[3], out=concat[:, 8 : 8 + c_out])
    tol = 2e-2 if dtype == torch.float16 else 1e-1
    assert torch.allclose(concat[:, 8 : 8 + c_out].float(), ref, atol=tol, rtol=tol)
    assert not concat[:, :8].any() and not concat[:, 8 + c_out :].any()
    assert torch.allclose(separable_relu(x, *weights[:2], dilation, *weights[2:]).float(), ref, atol=tol, rtol=tol)
