"""Triton kernels of the inference path; without Triton or a CUDA tensor each falls back to PyTorch.

- `upsample_argmax`: bilinear upsample + argmax in one pass. Serving needs only the label of each
  full-resolution pixel; `F.interpolate(...).argmax(1)` writes and re-reads C x H x W logits (80 MB
  in fp16 for 19 classes at 1024x2048), the kernel reads 1/4-resolution logits, writes 1 byte/pixel.
- `depthwise3x3_relu`: the separable convs' depthwise 3x3 (+ bias + ReLU), any dilation.
- `resize_concat`: the decoder's bilinear resize written straight into its concat buffer.
- `concat_channels`: `torch.cat` along channels of channels-last maps at memory speed.
- `spread_borders`: a 3x3 map spread over the border/interior regions of a full-size map.
- `max_pool3x3s2`: the stem's 3x3 / stride 2 / padding 1 max pool without the int64 indices
  PyTorch's CUDA max pool writes even in inference (4x the bytes of the pooled output).
- `normalize_pixels`: uint8 RGB -> normalised network input, zero-padded to more channels, in
  one pass (PyTorch: four passes over float32, then cuDNN's own pass padding 3 channels to 8).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..heads import resize
from ..pipeline.normalize import normalize_pixels_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch path below is used
    triton = None


def _on_triton(x: torch.Tensor) -> bool:
    """Whether the channels-last kernels below can take ``x``; otherwise their PyTorch path runs."""
    return triton is not None and x.is_cuda and x.stride(1) == 1


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
    def border_class(i, size):
        """Row (or column) ``i`` of ``size`` -> the row of `spread_borders`' small map it takes:
        0 for the first, min(size, 3) - 1 for the last, 1 between."""
        return tl.where(i == 0, 0, tl.where(i == size - 1, tl.minimum(size, 3) - 1, 1))

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

    @triton.jit
    def _depthwise3x3_relu_kernel(
        src, weight, bias, dst, sums, H, W, C, DIL,
        s_n, s_h, s_w, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr, SUMS: tl.constexpr,
    ):  # fmt: skip
        """ROWS output rows spaced DIL apart (y0, y0 + DIL, ...) of one x-tile x channel-tile of a
        channels-last tensor. Output row y needs input rows y - DIL, y, y + DIL, so walking down
        the rows DIL at a time loads each input row once (ROWS + 2 loads for ROWS rows, instead
        of 3 per row) and keeps two partial sums: the row above's and this row's. With SUMS, the
        program also writes the sum of the input over its own output pixels (one row of `sums`
        per program and image), from which the image pool's mean follows without another pass."""
        x_tiles, c_tiles = tl.cdiv(W, BLOCK_X), tl.cdiv(C, BLOCK_C)
        pid = tl.program_id(0)  # neighbouring programs: neighbouring channels of the same pixels
        c_tile, x_tile, group = pid % c_tiles, (pid // c_tiles) % x_tiles, pid // (c_tiles * x_tiles)
        y_first = group % DIL + (group // DIL) * ROWS * DIL
        xs = x_tile * BLOCK_X + tl.arange(0, BLOCK_X)
        cs = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
        n = tl.program_id(1).to(tl.int64)  # batch offsets pass 2**31 elements at batch 16+
        c_ok = cs < C
        left_ok = (xs >= DIL) & (xs - DIL < W)
        mid_ok = xs < W
        right_ok = xs + DIL < W
        taps = weight + cs * 9
        w00 = tl.load(taps + 0, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w01 = tl.load(taps + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w02 = tl.load(taps + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w10 = tl.load(taps + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w11 = tl.load(taps + 4, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w12 = tl.load(taps + 5, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w20 = tl.load(taps + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w21 = tl.load(taps + 7, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        w22 = tl.load(taps + 8, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        b = tl.load(bias + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        above = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)  # partial sum of output row y_in - DIL
        here = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)  # partial sum of output row y_in
        base = src + n * s_n + cs[None, :]
        out_base = dst + n * H * W * C + cs[None, :]
        total = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)
        for i in tl.static_range(ROWS + 2):
            y_in = y_first + (i - 1) * DIL
            row_ok = (y_in >= 0) & (y_in < H)
            row = base + y_in * s_h
            v_l = tl.load(row + ((xs - DIL) * s_w)[:, None], mask=(row_ok & left_ok)[:, None] & c_ok[None, :], other=0.0)
            v_m = tl.load(row + (xs * s_w)[:, None], mask=(row_ok & mid_ok)[:, None] & c_ok[None, :], other=0.0)
            v_r = tl.load(row + ((xs + DIL) * s_w)[:, None], mask=(row_ok & right_ok)[:, None] & c_ok[None, :], other=0.0)
            v_l, v_m, v_r = v_l.to(tl.float32), v_m.to(tl.float32), v_r.to(tl.float32)
            if SUMS and i >= 1 and i <= ROWS:  # y_in is one of this program's output rows
                total += v_m
            if i >= 2:  # row y_in - DIL now has all three of its input rows
                y_out = y_in - DIL
                out = tl.maximum(above + w20 * v_l + w21 * v_m + w22 * v_r + b, 0.0)
                ok = ((y_out < H) & mid_ok)[:, None] & c_ok[None, :]
                tl.store(out_base + (y_out * W + xs)[:, None] * C, out.to(dst.dtype.element_ty), mask=ok)
            above = here + w10 * v_l + w11 * v_m + w12 * v_r
            here = w00 * v_l + w01 * v_m + w02 * v_r
        if SUMS:
            spatial = pid // c_tiles, tl.num_programs(0) // c_tiles  # this program's row of `sums`, rows per image
            tl.store(sums + (n * spatial[1] + spatial[0]) * C + cs, tl.sum(total, axis=0), mask=c_ok)


# (BLOCK_X, BLOCK_C, ROWS, num_warps). Undilated (the decoder's): of the tilings
# `bench.kernel_variants` times, the fastest at R-50-D8's two decoder shapes on an H100. Dilated
# (the ASPP's): one row group per residue class of the rows mod the dilation, so each input row is
# loaded (ROWS + 2) / ROWS times (the ROWS + 2 rows of the walk) instead of twice with 2 rows per
# group: 1.34 / 1.27 / 1.22 -> 1.09 / 1.15 / 1.15 ms at dilation 12 / 24 / 36, batch 8 (H = 128,
# so 11 / 6 / 4 rows). Tuning per shape (Triton's autotune) cost ~5 s of start-up per bucket.
DEPTHWISE_TILING = (64, 64, 2, 4)
DILATED_BLOCKS = (32, 64, 4)  # (BLOCK_X, BLOCK_C, num_warps); ROWS = ceil(H / dilation), at most MAX_ROWS
MAX_ROWS = 16


def depthwise_tiling(height: int, dilation: int) -> tuple[int, int, int, int]:
    if dilation == 1:
        return DEPTHWISE_TILING
    block_x, block_c, warps = DILATED_BLOCKS
    return block_x, block_c, min(-(-height // dilation), MAX_ROWS), warps


def depthwise3x3_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dilation: int,
    tiling: tuple[int, int, int, int] | None = None,
) -> torch.Tensor:
    """relu(depthwise 3x3 conv, padding = dilation, + bias): the BN-folded depthwise half of a
    separable conv. On CUDA with channels-last input one Triton pass, whatever the dilation
    (cuDNN falls back to a slow grouped-direct kernel for dilated depthwise convs)."""
    if not _on_triton(x):
        return depthwise3x3_reference(x, weight, bias, dilation)
    return _depthwise3x3(x, weight, bias, dilation, tiling or depthwise_tiling(x.shape[2], dilation), sums=False)[0]


def depthwise3x3_relu_and_mean(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """`depthwise3x3_relu`, and x's mean over each image and channel (N x C, float32): the ASPP's
    image pool, which would otherwise read its 2048-channel input once more (0.38 ms of R-50-D8's
    batch of 8 at 1024x2048 on an H100). The mean sums per-program partial sums (deterministic)."""
    if not _on_triton(x):
        return depthwise3x3_reference(x, weight, bias, dilation), x.float().mean(dim=(2, 3))
    out, sums = _depthwise3x3(x, weight, bias, dilation, depthwise_tiling(x.shape[2], dilation), sums=True)
    return out, sums.sum(dim=1) / (x.shape[2] * x.shape[3])


def _depthwise3x3(x, weight, bias, dilation, tiling, sums: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, c, h, w = x.shape
    out = torch.empty_like(x, memory_format=torch.channels_last)
    block_x, block_c, rows, warps = tiling
    row_groups = dilation * triton.cdiv(triton.cdiv(h, dilation), rows)
    grid = (row_groups * triton.cdiv(w, block_x) * triton.cdiv(c, block_c), n)
    programs = grid[0] // triton.cdiv(c, block_c)  # per image and channel tile
    partial = torch.empty((n, programs, c) if sums else (1,), dtype=torch.float32, device=x.device)
    _depthwise3x3_relu_kernel[grid](
        x, weight.contiguous(), bias, out, partial, h, w, c, dilation, x.stride(0), x.stride(2), x.stride(3),
        BLOCK_X=block_x, BLOCK_C=block_c, ROWS=rows, SUMS=sums, num_warps=warps,
    )  # fmt: skip
    return out, partial if sums else None


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
    """``dst[:, offset : offset + C] = src`` for channels-last tensors, as one Triton pass. For the
    ASPP's concat of four 8 x 512 x 128 x 256 fp16 maps on an H100, `torch.cat` takes 1.14 ms
    (1.9 TB/s, counting each byte read and written once) and these copies 0.77 ms (2.8 TB/s)."""
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


def spread_borders_reference(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Copy each of the 9 regions (corners, edges, interior) of an H x W map from the matching
    pixel of the (at most 3 x 3) `small` map."""
    h, w = size
    out = torch.empty((*small.shape[:2], h, w), dtype=small.dtype, device=small.device)

    def regions(n: int) -> list[tuple[slice, int]]:  # (output slice, row/column of `small`)
        return [(slice(0, 1), 0)] + ([(slice(1, n - 1), 1)] if n > 2 else []) + ([(slice(n - 1, n), min(n, 3) - 1)] if n > 1 else [])

    for rows, sy in regions(h):
        for cols, sx in regions(w):
            out[:, :, rows, cols] = small[:, :, sy : sy + 1, sx : sx + 1]
    return out


if triton is not None:

    @triton.jit
    def _spread_borders_kernel(
        src, dst, C, H, W, s_n, s_c, s_h, s_w, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """dst (channels-last N x C x H x W) from src's first / middle / last row and column."""
        n = tl.program_id(2).to(tl.int64)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (p < H * W)[:, None] & (c < C)[None, :]
        y, x = p // W, p % W
        sy, sx = border_class(y, H), border_class(x, W)
        v = tl.load(src + n * s_n + c[None, :] * s_c + (sy * s_h + sx * s_w)[:, None], mask=mask)
        tl.store(dst + n * H * W * C + p[:, None] * C + c[None, :], v, mask=mask)


def spread_borders(small: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x C x h x w (h, w <= 3) -> N x C x H x W whose first row, last row and the rows between
    take small's first, last and middle row (and likewise columns): the result of a 3x3 conv
    (padding 1) over a constant map, spread from its value on a 3 x 3 map. On CUDA one Triton
    pass writing channels-last (PyTorch's broadcast copy into the 9 regions is ~10x slower)."""
    if triton is None or not small.is_cuda:
        return spread_borders_reference(small, size)
    n, c = small.shape[:2]
    h, w = size
    out = torch.empty((n, c, h, w), dtype=small.dtype, device=small.device, memory_format=torch.channels_last)
    block_p, block_c = 32, 128
    grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), n)
    _spread_borders_kernel[grid](small, out, c, h, w, *small.stride(), BLOCK_P=block_p, BLOCK_C=block_c)
    return out


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
    if triton is None or not pixels.is_cuda or not pixels.is_contiguous():
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

