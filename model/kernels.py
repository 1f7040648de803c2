"""Bilinear upsample + argmax in one GPU pass, never writing full-resolution logits.

The decode head predicts C-class logits at 1/4 resolution; serving needs only the label of each
full-resolution pixel. `F.interpolate(...).argmax(1)` writes and re-reads C x H x W logits (80 MB
in fp16 for 19 classes at 1024x2048); the Triton kernel reads the 1/4-resolution logits and
writes one byte per pixel. Without Triton or a CUDA tensor it falls back to PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .heads import resize

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path below is used
    triton = None


def upsample_argmax_reference(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    return resize(logits.float(), size, align_corners).argmax(dim=1).to(torch.uint8)


if triton is not None:

    @triton.jit
    def _source_index(o, scale, size_in, ALIGN: tl.constexpr):
        """PyTorch's bilinear source index: the two neighbours and the weight of the second."""
        scale = tl.cast(scale, tl.float32)  # a Python float (fp64) under torch.compile
        if ALIGN:
            s = o.to(tl.float32) * scale
        else:  # area_pixel_compute_source_index, clamped at 0
            s = tl.maximum((o.to(tl.float32) + 0.5) * scale - 0.5, 0.0)
        i0 = tl.minimum(s.to(tl.int32), size_in - 1)
        return i0, tl.minimum(i0 + 1, size_in - 1), s - i0.to(tl.float32)

    @triton.jit
    def _upsample_argmax_kernel(
        src, dst, C, H_in, W_in, H_out, W_out, scale_h, scale_w,
        s_n, s_c, s_h, s_w, ALIGN: tl.constexpr, BLOCK: tl.constexpr,
    ):  # fmt: skip
        n = tl.program_id(1)
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < H_out * W_out
        oy = offs // W_out
        ox = offs % W_out
        y0, y1, ly = _source_index(oy, scale_h, H_in, ALIGN)
        x0, x1, lx = _source_index(ox, scale_w, W_in, ALIGN)
        base = src + n * s_n
        best = tl.full([BLOCK], float("-inf"), tl.float32)
        label = tl.zeros([BLOCK], tl.int32)
        for c in range(C):
            p = base + c * s_c
            v00 = tl.load(p + y0 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
            v01 = tl.load(p + y0 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
            v10 = tl.load(p + y1 * s_h + x0 * s_w, mask=mask, other=0.0).to(tl.float32)
            v11 = tl.load(p + y1 * s_h + x1 * s_w, mask=mask, other=0.0).to(tl.float32)
            v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
            better = v > best
            best = tl.where(better, v, best)
            label = tl.where(better, c, label)
        tl.store(dst + n * H_out * W_out + offs, label.to(tl.uint8), mask=mask)


def _scale(size_in: int, size_out: int, align_corners: bool) -> float:
    if align_corners:
        return (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    return size_in / size_out


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], align_corners: bool) -> torch.Tensor:
    """N x C x h x w logits -> N x H x W uint8 labels of the bilinearly resized logits."""
    if triton is None or not logits.is_cuda or logits.shape[1] > 255:
        return upsample_argmax_reference(logits, size, align_corners)
    n, c, h_in, w_in = logits.shape
    h_out, w_out = size
    out = torch.empty((n, h_out, w_out), dtype=torch.uint8, device=logits.device)
    scale_h, scale_w = _scale(h_in, h_out, align_corners), _scale(w_in, w_out, align_corners)
    block = 1024
    grid = (triton.cdiv(h_out * w_out, block), n)
    _upsample_argmax_kernel[grid](
        logits, out, c, h_in, w_in, h_out, w_out, scale_h, scale_w, *logits.stride(),
        ALIGN=align_corners, BLOCK=block,
    )  # fmt: skip
    return out


def depthwise3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.relu(F.conv2d(x, weight, bias, 1, dilation, dilation, x.shape[1]))


if triton is not None:

    @triton.autotune(
        configs=[
            triton.Config({"BLOCK_P": p, "BLOCK_C": c}, num_warps=w)
            for p, c, w in [(64, 64, 4), (32, 128, 4), (128, 32, 4), (64, 128, 8), (128, 64, 8), (16, 256, 4)]
        ],
        key=["H", "W", "C", "DIL"],
    )  # tuned once per shape, during the service's warm-up
    @triton.jit
    def _depthwise3x3_relu_kernel(
        src, weight, bias, dst, H, W, C, DIL,
        s_n, s_h, s_w, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """One block of pixels x channels of a channels-last tensor; 9 taps, fp32 accumulation."""
        n = tl.program_id(2)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        p_mask = p < H * W
        c_mask = c < C
        oy = p // W
        ox = p % W
        base = src + n * s_n
        acc = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        for ky in tl.static_range(3):
            iy = oy + (ky - 1) * DIL
            for kx in tl.static_range(3):
                ix = ox + (kx - 1) * DIL
                ok = p_mask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
                ptr = base + (iy * s_h + ix * s_w)[:, None] + c[None, :]
                v = tl.load(ptr, mask=ok[:, None] & c_mask[None, :], other=0.0).to(tl.float32)
                w = tl.load(weight + c * 9 + ky * 3 + kx, mask=c_mask, other=0.0).to(tl.float32)
                acc += v * w[None, :]
        acc += tl.load(bias + c, mask=c_mask, other=0.0).to(tl.float32)[None, :]
        acc = tl.maximum(acc, 0.0)
        out = dst + n * H * W * C + p[:, None] * C + c[None, :]
        tl.store(out, acc.to(dst.dtype.element_ty), mask=p_mask[:, None] & c_mask[None, :])


def depthwise3x3_relu(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    """relu(depthwise 3x3 conv, padding = dilation, + bias): the BN-folded depthwise half of a
    separable conv. On CUDA with channels-last input one Triton pass, whatever the dilation
    (cuDNN falls back to a slow grouped-direct kernel for dilated depthwise convs)."""
    n, c, h, w = x.shape
    if triton is None or not x.is_cuda or x.stride(1) != 1:
        return depthwise3x3_reference(x, weight, bias, dilation)
    out = torch.empty_like(x, memory_format=torch.channels_last)

    def grid(meta):
        return triton.cdiv(h * w, meta["BLOCK_P"]), triton.cdiv(c, meta["BLOCK_C"]), n

    _depthwise3x3_relu_kernel[grid](
        x, weight.contiguous(), bias, out, h, w, c, dilation, x.stride(0), x.stride(2), x.stride(3)
    )  # fmt: skip
    return out


if triton is not None:

    @triton.jit
    def _resize_into_kernel(
        src, dst, C, H_in, W_in, H_out, W_out, scale_h, scale_w,
        s_n, s_h, s_w, d_n, d_h, d_w, ALIGN: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Bilinear resize of channels-last `src` into a channels-last (possibly sliced) `dst`."""
        n = tl.program_id(2)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (p < H_out * W_out)[:, None] & (c < C)[None, :]
        y0, y1, ly = _source_index(p // W_out, scale_h, H_in, ALIGN)
        x0, x1, lx = _source_index(p % W_out, scale_w, W_in, ALIGN)
        base = src + n * s_n + c[None, :]
        v00 = tl.load(base + (y0 * s_h + x0 * s_w)[:, None], mask=mask, other=0.0).to(tl.float32)
        v01 = tl.load(base + (y0 * s_h + x1 * s_w)[:, None], mask=mask, other=0.0).to(tl.float32)
        v10 = tl.load(base + (y1 * s_h + x0 * s_w)[:, None], mask=mask, other=0.0).to(tl.float32)
        v11 = tl.load(base + (y1 * s_h + x1 * s_w)[:, None], mask=mask, other=0.0).to(tl.float32)
        lx, ly = lx[:, None], ly[:, None]
        v = (1.0 - ly) * ((1.0 - lx) * v00 + lx * v01) + ly * ((1.0 - lx) * v10 + lx * v11)
        out = dst + n * d_n + ((p // W_out) * d_h + (p % W_out) * d_w)[:, None] + c[None, :]
        tl.store(out, v.to(dst.dtype.element_ty), mask=mask)


def resize_concat(x: torch.Tensor, skip: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """`cat([resize(x, skip's size), skip], dim=1)` without materialising the resized `x`: on
    CUDA the resize writes straight into its channel slice of the concatenated buffer."""
    if triton is None or not x.is_cuda or x.stride(1) != 1:
        return torch.cat([resize(x, skip.shape[2:], align_corners), skip], dim=1)
    n, c, h_in, w_in = x.shape
    h_out, w_out = skip.shape[2:]
    out = torch.empty((n, c + skip.shape[1], h_out, w_out), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)  # fmt: skip
    out[:, c:].copy_(skip)
    block_p, block_c = 32, 128
    grid = (triton.cdiv(h_out * w_out, block_p), triton.cdiv(c, block_c), n)
    _resize_into_kernel[grid](
        x, out, c, h_in, w_in, h_out, w_out, _scale(h_in, h_out, align_corners), _scale(w_in, w_out, align_corners),
        x.stride(0), x.stride(2), x.stride(3), out.stride(0), out.stride(2), out.stride(3),
        ALIGN=align_corners, BLOCK_P=block_p, BLOCK_C=block_c,
    )  # fmt: skip
    return out
