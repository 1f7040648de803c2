"""Bilinear resizes that never write what they would only re-read: the final upsample + argmax, the
decoder's resize straight into its concat buffer, and the ASPP's channel concat at memory speed."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...heads import resize
from .common import _on_triton, on_kernel_device, tl, triton


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
    if not on_kernel_device(logits) or logits.shape[1] > 255:
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


if triton is not None:

    @triton.jit
    def _copy_channels_kernel(src, dst, P, C, C_DST, OFFSET, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        """Rows of a channels-last P x C tensor into channels OFFSET.. of a P x C_DST one."""
        p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        ok = (p < P)[:, None] & (c < C)[None, :]
        v = tl.load(src + p[:, None] * C + c[None, :], mask=ok)
        tl.store(dst + p[:, None] * C_DST + OFFSET + c[None, :], v, mask=ok)


def _copy_channels(src: torch.Tensor, dst: torch.Tensor, offset: int) -> None:
    """``dst[:, offset : offset + C] = src`` for channels-last tensors, as one Triton pass (nearer
    memory speed than `torch.cat`'s copy: bench/RESULTS.md)."""
    if not (_on_triton(src) and src.is_contiguous(memory_format=torch.channels_last)):
        dst[:, offset : offset + src.shape[1]].copy_(src)
        return
    n, c, h, w = src.shape
    block_p, block_c = 64, triton.next_power_of_2(min(c, 128))
    grid = (triton.cdiv(n * h * w, block_p), triton.cdiv(c, block_c))
    _copy_channels_kernel[grid](src, dst, n * h * w, c, dst.shape[1], offset, BLOCK_P=block_p, BLOCK_C=block_c)


def concat_channels(tensors: list[torch.Tensor]) -> torch.Tensor:
    """`torch.cat(tensors, dim=1)`; for channels-last CUDA tensors into a channels-last buffer, one
    `_copy_channels` pass per tensor."""
    first = tensors[0]
    if not _on_triton(first):
        return torch.cat(tensors, dim=1)
    n, _, h, w = first.shape
    out = torch.empty((n, sum(t.shape[1] for t in tensors), h, w), dtype=first.dtype, device=first.device,
                      memory_format=torch.channels_last)  # fmt: skip
    offset = 0
    for t in tensors:
        _copy_channels(t, out, offset)
        offset += t.shape[1]
    return out


RESIZE_TILING = (16, 256, 4)  # (BLOCK_P, BLOCK_C, num_warps): the fastest of `bench.kernel_variants --parts head`


def resize_concat(
    x: torch.Tensor, skip: torch.Tensor, align_corners: bool, channels: int | None = None,
    tiling: tuple[int, int, int] = RESIZE_TILING,
) -> torch.Tensor:  # fmt: skip
    """`cat([resize(x, skip's size), skip], dim=1)` without materialising the resized `x`: on
    CUDA the resize writes straight into its channel slice of the concatenated buffer. With
    ``channels``, zero channels follow up to that many."""
    c, joined = x.shape[1], x.shape[1] + skip.shape[1]
    channels = channels or joined
    if not _on_triton(x):
        out = torch.cat([resize(x, skip.shape[2:], align_corners), skip], dim=1)
        return F.pad(out, (0, 0, 0, 0, 0, channels - joined))
    n, _, h_in, w_in = x.shape
    h_out, w_out = skip.shape[2:]
    out = torch.empty((n, channels, h_out, w_out), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    _copy_channels(skip, out, c)
    out[:, joined:].zero_()
    block_p, block_c, warps = tiling
    grid = (triton.cdiv(h_out * w_out, block_p), triton.cdiv(c, block_c), n)
    _resize_into_kernel[grid](
        x, out, c, h_in, w_in, h_out, w_out, _scale(h_in, h_out, align_corners), _scale(w_in, w_out, align_corners),
        x.stride(0), x.stride(2), x.stride(3), out.stride(0), out.stride(2), out.stride(3),
        ALIGN=align_corners, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return out

