"""Each kernel against an independent reference written here from plain PyTorch ops or numpy (shift
and add, not conv; explicit bilinear weights, not F.interpolate): the CPU paths on any machine,
the Triton paths on a CUDA GPU, or on the CPU under Triton's interpreter (skipped otherwise)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.accel.kernels import (
    concat_channels,
    depthwise3x3_relu,
    depthwise3x3_relu_and_mean,
    max_pool3x3s2,
    normalize_pixels,
    resize_concat,
    spread_borders,
    triton,
    upsample_argmax,
)
from model.accel.kernels.common import INTERPRETED

#: where the Triton tests run: the GPU, or the CPU under Triton's interpreter (tests/test_kernels_interpreted.py)
KERNEL_DEVICE = "cpu" if INTERPRETED else "cuda"
needs_kernel_device = pytest.mark.skipif(
    triton is None or not (torch.cuda.is_available() or INTERPRETED),
    reason="needs a CUDA GPU and Triton (run on the GPU box), or Triton's interpreter (tests/test_kernels_interpreted.py)",
)
MEAN, STD = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])


def bilinear(x: torch.Tensor, size: tuple[int, int], align_corners: bool) -> np.ndarray:
    """N x C x h x w -> N x C x H x W float64, from each output pixel's source coordinate (PyTorch's
    convention: half-pixel centres clamped at 0, or corners aligned) and its two neighbours per axis."""

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        o = np.arange(n_out, dtype=np.float64)
        if align_corners:
            src = o * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        else:
            src = np.maximum((o + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        return i0, np.minimum(i0 + 1, n_in - 1), src - i0

    v = x.detach().double().cpu().numpy()
    y0, y1, ly = axis(v.shape[2], size[0])
    x0, x1, lx = axis(v.shape[3], size[1])

    def row(y: np.ndarray) -> np.ndarray:
        return v[:, :, y][:, :, :, x0] * (1 - lx) + v[:, :, y][:, :, :, x1] * lx

    return row(y0) * (1 - ly)[:, None] + row(y1) * ly[:, None]


def assert_labels_are_argmax(labels: torch.Tensor, values: np.ndarray, tol: float) -> None:
    """Each label's value is the pixel's maximum, within ``tol`` (near-ties may go either way)."""
    assert labels.dtype == torch.uint8 and labels.shape == values.shape[:1] + values.shape[2:]
    chosen = np.take_along_axis(values, labels.cpu().numpy().astype(np.int64)[:, None], axis=1)[:, 0]
    assert (values.max(axis=1) - chosen <= tol).all()


def depthwise_shift_add(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """relu(bias + sum over the 9 taps of weight x the input shifted by the tap), float64 on the CPU."""
    x, weight, bias = x.double().cpu(), weight.double().cpu(), bias.double().cpu()
    n, c, h, w = x.shape
    padded = F.pad(x, (dilation,) * 4)
    out = bias.view(1, c, 1, 1).expand(n, c, h, w).clone()
    for ty in range(3):
        for tx in range(3):
            shifted = padded[:, :, ty * dilation : ty * dilation + h, tx * dilation : tx * dilation + w]
            out += weight[:, 0, ty, tx].view(1, c, 1, 1) * shifted
    return out.relu()


def max_of_windows(x: torch.Tensor) -> torch.Tensor:
    """3x3 / stride 2 / padding 1 max pool: the max of the 9 strided views of the -inf-padded input."""
    h_out, w_out = (x.shape[2] - 1) // 2 + 1, (x.shape[3] - 1) // 2 + 1
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    views = [padded[:, :, ty : ty + 2 * h_out - 1 : 2, tx : tx + 2 * w_out - 1 : 2] for ty in range(3) for tx in range(3)]  # fmt: skip
    return torch.stack(views).amax(dim=0)


def gather_borders(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Row y of the result is small's row 0 (y first), its last row (y last) or row 1 (between); columns alike."""

    def index(n: int) -> torch.Tensor:
        rows = [0 if i == 0 else min(n, 3) - 1 if i == n - 1 else 1 for i in range(n)]
        return torch.tensor(rows, device=small.device)

    return small[:, :, index(size[0])][:, :, :, index(size[1])]


def normalized_numpy(pixels: torch.Tensor, channels: int) -> torch.Tensor:
    """(pixels - mean) / std in float32 numpy, N x channels x H x W with zeros past the 3rd."""
    x = (pixels.cpu().numpy().astype(np.float32) - MEAN.numpy()) / STD.numpy()
    zeros = np.zeros((*x.shape[:3], channels - 3), dtype=np.float32)
    return torch.from_numpy(np.concatenate([x, zeros], axis=3).transpose(0, 3, 1, 2).copy())


def channels_last(*shape, device="cpu", dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)


# --- upsample + argmax


@pytest.mark.parametrize("align_corners", [False, True])
def test_upsample_argmax_cpu_path(align_corners):
    logits = torch.randn(2, 5, 9, 13)
    labels = upsample_argmax(logits, (36, 53), align_corners)
    assert_labels_are_argmax(labels, bilinear(logits, (36, 53), align_corners), tol=1e-5)


@needs_kernel_device
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("classes", [19, 150, 6])
def test_triton_upsample_argmax(align_corners, layout, classes):
    """Class counts: Cityscapes, ADE20K and a few classes."""
    logits = torch.randn(2, classes, 64, 96, device=KERNEL_DEVICE)
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    labels = upsample_argmax(logits, (257, 381), align_corners)
    assert_labels_are_argmax(labels, bilinear(logits, (257, 381), align_corners), tol=1e-4)


# --- depthwise 3x3


@pytest.mark.parametrize("dilation", [1, 4])
def test_depthwise_cpu_path(dilation):
    x, weight, bias = torch.randn(2, 6, 11, 17), torch.randn(6, 1, 3, 3), torch.randn(6)
    expected = depthwise_shift_add(x, weight, bias, dilation)
    assert torch.allclose(depthwise3x3_relu(x, weight, bias, dilation).double(), expected, rtol=1e-5, atol=1e-5)
    out, mean = depthwise3x3_relu_and_mean(x, weight, bias, dilation)
    assert torch.allclose(out.double(), expected, rtol=1e-5, atol=1e-5)
    assert mean.dtype == torch.float32 and mean.shape == (2, 6)
    assert torch.allclose(mean.double(), x.double().mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)


@needs_kernel_device
@pytest.mark.parametrize("dilation", [1, 12, 36])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_depthwise(dilation, dtype):
    """Odd sizes and a channel count that is no multiple of the block, so every mask is exercised."""
    x = channels_last(2, 200, 45, 77, device=KERNEL_DEVICE, dtype=dtype)
    weight, bias = torch.randn(200, 1, 3, 3, device=KERNEL_DEVICE, dtype=dtype), torch.randn(200, device=KERNEL_DEVICE, dtype=dtype)
    got = depthwise3x3_relu(x, weight, bias, dilation)
    expected = depthwise_shift_add(x, weight, bias, dilation)
    assert got.is_contiguous(memory_format=torch.channels_last)
    tol = 1e-2 if dtype == torch.float16 else 1e-4  # fp16: the output's own rounding
    assert torch.allclose(got.double().cpu(), expected, atol=tol, rtol=tol)
    with_mean, mean = depthwise3x3_relu_and_mean(x, weight, bias, dilation)
    assert torch.equal(with_mean, got)
    assert mean.shape == (2, 200)
    assert torch.allclose(mean.double().cpu(), x.double().cpu().mean(dim=(2, 3)), atol=1e-5, rtol=1e-4)


# --- resize + concat, concat


@pytest.mark.parametrize("align_corners", [False, True])
def test_resize_concat_cpu_path(align_corners):
    x, skip = torch.randn(2, 5, 7, 9), torch.randn(2, 3, 26, 35)
    expected = np.concatenate([bilinear(x, (26, 35), align_corners), skip.double().numpy()], axis=1)
    assert np.allclose(resize_concat(x, skip, align_corners).numpy(), expected, atol=1e-5)
    padded = resize_concat(x, skip, align_corners, channels=16)  # zero channels after the 8
    assert padded.shape == (2, 16, 26, 35) and np.allclose(padded[:, :8].numpy(), expected, atol=1e-5)
    assert not padded[:, 8:].any()


@needs_kernel_device
@pytest.mark.parametrize("align_corners", [False, True])
def test_triton_resize_concat(align_corners):
    """Channel count no multiple of the block; output size no multiple of the input's."""
    x, skip = channels_last(2, 200, 33, 65, device=KERNEL_DEVICE), channels_last(2, 48, 129, 257, device=KERNEL_DEVICE)
    expected = np.concatenate([bilinear(x, (129, 257), align_corners), skip.double().cpu().numpy()], axis=1)
    got = resize_concat(x, skip, align_corners)
    assert got.is_contiguous(memory_format=torch.channels_last)
    # fp32 interpolation weights: a few ulps of the largest values (~5) apart from float64's
    assert np.allclose(got.cpu().numpy(), expected, atol=1e-4)
    padded = resize_concat(x, skip, align_corners, channels=256)  # zero channels after the 248
    assert np.allclose(padded[:, :248].cpu().numpy(), expected, atol=1e-4) and not padded[:, 248:].any()


def test_concat_cpu_path():
    tensors = [torch.randn(2, c, 5, 7) for c in (3, 8, 1)]
    assert np.array_equal(concat_channels(tensors).numpy(), np.concatenate([t.numpy() for t in tensors], axis=1))


@needs_kernel_device
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_triton_concat(dtype):
    """Channel counts under, at and over the block, and not multiples of 8."""
    tensors = [channels_last(2, c, 33, 65, device=KERNEL_DEVICE, dtype=dtype) for c in (12, 128, 300, 5)]
    got = concat_channels(tensors)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(got.cpu().numpy(), np.concatenate([t.cpu().numpy() for t in tensors], axis=1))


# --- spread borders


@pytest.mark.parametrize("size", [(4, 5), (9, 2), (1, 7), (2, 1), (3, 3)])
def test_spread_borders_is_a_3x3_conv_of_a_constant_map(size):
    """What the head relies on: conv3x3 (padding 1) of a constant map, computed on (at most) 3 x 3
    pixels and spread, equals the conv of the full-size map."""
    value, weight = torch.randn(2, 6, 1, 1), torch.randn(4, 6, 3, 3)
    h, w = size
    small = F.conv2d(value.expand(-1, -1, min(h, 3), min(w, 3)), weight, padding=1)
    full = F.conv2d(value.expand(-1, -1, h, w), weight, padding=1)
    assert torch.allclose(spread_borders(small, size), full, rtol=1e-5, atol=1e-5)
    assert torch.equal(spread_borders(small, size), gather_borders(small, size))


def test_spread_borders_copies_first_middle_last_rows_and_columns():
    small = torch.arange(2 * 3 * 3, dtype=torch.float32).view(1, 2, 3, 3)
    out = spread_borders(small, (4, 5))
    expected = [[9, 10, 10, 10, 11], [12, 13, 13, 13, 14], [12, 13, 13, 13, 14], [15, 16, 16, 16, 17]]
    assert torch.equal(out[0, 1], torch.tensor(expected).float())


@needs_kernel_device
@pytest.mark.parametrize("size", [(45, 77), (1, 9), (2, 1)])
def test_triton_spread_borders(size):
    small = torch.randn(2, 200, min(size[0], 3), min(size[1], 3), device=KERNEL_DEVICE, dtype=torch.float16)
    got = spread_borders(small, size)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, gather_borders(small, size))


# --- max pool


@pytest.mark.parametrize("shape", [(2, 5, 9, 12), (1, 3, 2, 1), (1, 4, 1, 5)])
def test_max_pool_cpu_path(shape):
    x = torch.randn(shape)
    assert torch.equal(max_pool3x3s2(x), max_of_windows(x))


@needs_kernel_device
@pytest.mark.parametrize("shape", [(2, 64, 45, 77), (1, 200, 2, 1), (3, 8, 1, 5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_triton_max_pool(shape, dtype):
    """Odd and tiny sizes (windows cut by the padding on every side), channels no multiple of the block."""
    x = channels_last(*shape, device=KERNEL_DEVICE, dtype=dtype)
    got = max_pool3x3s2(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, max_of_windows(x))


# --- normalize


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("channels", [3, 8])
def test_normalize_cpu_path(dtype, channels):
    pixels = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    out = normalize_pixels(pixels, MEAN, STD, dtype, channels)
    assert out.shape == (2, channels, 5, 7) and out.dtype == dtype
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, normalized_numpy(pixels, channels).to(dtype))  # IEEE float32 ops: exact


@needs_kernel_device
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels", [3, 8])
@pytest.mark.parametrize("shape", [(2, 37, 51), (1, 1, 1), (3, 64, 96)])
def test_triton_normalize(dtype, channels, shape):
    if INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("Triton's interpreter rounds float32 to bfloat16 by truncation, the GPU to nearest even")
    pixels = torch.randint(0, 256, (*shape, 3), dtype=torch.uint8, device=KERNEL_DEVICE)
    got = normalize_pixels(pixels, MEAN.to(KERNEL_DEVICE), STD.to(KERNEL_DEVICE), dtype, channels)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got.cpu(), normalized_numpy(pixels, channels).to(dtype))  # IEEE division (div_rn): exact
