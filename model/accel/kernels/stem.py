"""The network's first passes: uint8 pixels to normalised, channel-padded input, and the stem's max pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...pipeline.normalize import normalize_pixels_reference
from .common import _on_triton, on_kernel_device, tl, triton


def max_pool3x3s2_reference(x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(x, 3, 2, 1)


if triton is not None:

    @triton.jit
    def _max_pool3x3s2_kernel(
        src, dst, C, H, W, H_out, W_out, s_n, s_h, s_w, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Channels-last 3x3 max pool, stride 2, padding 1: each window holds at least one pixel."""
        n = tl.program_id(2).to(tl.int64)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_ok, c_ok = p < H_out * W_out, c < C
        y, x = 2 * (p // W_out) - 1, 2 * (p % W_out) - 1
        base = src + n * s_n + c[None, :]
        best = tl.full([BLOCK_P, BLOCK_C], float("-inf"), dst.dtype.element_ty)
        for dy in tl.static_range(3):
            for dx in tl.static_range(3):
                ok = p_ok & (y + dy >= 0) & (y + dy < H) & (x + dx >= 0) & (x + dx < W)
                v = tl.load(base + ((y + dy) * s_h + (x + dx) * s_w)[:, None], mask=ok[:, None] & c_ok[None, :],
                            other=float("-inf"))  # fmt: skip
                best = tl.maximum(best, v)
        tl.store(dst + n * H_out * W_out * C + p[:, None] * C + c[None, :], best, mask=p_ok[:, None] & c_ok[None, :])


def max_pool3x3s2(x: torch.Tensor) -> torch.Tensor:
    """`F.max_pool2d(x, 3, 2, 1)`; on CUDA with channels-last input one Triton pass that reads the
    input once and writes only the pooled values."""
    if not _on_triton(x):
        return max_pool3x3s2_reference(x)
    n, c, h, w = x.shape
    h_out, w_out = (h - 1) // 2 + 1, (w - 1) // 2 + 1
    out = torch.empty((n, c, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    block_p, block_c = 64, 64
    grid = (triton.cdiv(h_out * w_out, block_p), triton.cdiv(c, block_c), n)
    _max_pool3x3s2_kernel[grid](
        x, out, c, h, w, h_out, w_out, x.stride(0), x.stride(2), x.stride(3), BLOCK_P=block_p, BLOCK_C=block_c,
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _normalize_pixels_kernel(
        src, dst, mean, std, P, C_IN: tl.constexpr, C_OUT, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """(pixel - mean) / std of BLOCK_P pixels, written as C_OUT channels (zeros past C_IN)."""
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.arange(0, BLOCK_C)
        c_in = c < C_IN
        ok = (p < P)[:, None] & c_in[None, :]
        v = tl.load(src + p[:, None] * C_IN + c[None, :], mask=ok, other=0).to(tl.float32)
        mu = tl.load(mean + c, mask=c_in, other=0.0)[None, :]
        sd = tl.load(std + c, mask=c_in, other=1.0)[None, :]
        out = tl.where(ok, tl.math.div_rn(v - mu, sd), 0.0)  # div_rn: IEEE division, as PyTorch's
        tl.store(dst + p[:, None] * C_OUT + c[None, :], out.to(dst.dtype.element_ty), mask=(p < P)[:, None] & (c < C_OUT)[None, :])


def normalize_pixels(
    pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype = torch.float32, channels: int = 3
) -> torch.Tensor:
    """uint8 N x H x W x C_in -> ``dtype`` N x ``channels`` x H x W channels-last: ``(pixels -
    mean) / std``, then zeros up to ``channels``. On CUDA one Triton pass (1 byte per channel in,
    only the output written); cuDNN's fp16 convs want a multiple of 8 input channels and pad
    a 3-channel input in a pass of their own."""
    if not on_kernel_device(pixels) or not pixels.is_contiguous():
        return normalize_pixels_reference(pixels, mean, std, dtype, channels)
    n, h, w, c_in = pixels.shape
    out = torch.empty((n, channels, h, w), dtype=dtype, device=pixels.device, memory_format=torch.channels_last)
    block_p = 256
    grid = (triton.cdiv(n * h * w, block_p),)
    _normalize_pixels_kernel[grid](
        pixels, out, mean.float(), std.float(), n * h * w, C_IN=c_in, C_OUT=channels,
        BLOCK_P=block_p, BLOCK_C=triton.next_power_of_2(max(channels, c_in)),
    )  # fmt: skip
    return out

