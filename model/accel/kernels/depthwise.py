"""The separable convs' depthwise 3x3 (+ bias + ReLU), any dilation, in one pass over channels-last input."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import _on_triton, tl, triton


def depthwise3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.relu(F.conv2d(x, weight, bias, 1, dilation, dilation, x.shape[1]))


if triton is not None:

    @triton.jit
    def _row_taps(base, y, H, W, xs, DIL, s_h, s_w, c_ok):
        """Input row y at x - DIL, x and x + DIL for the tile's pixels x, as fp32 (zeros outside the image)."""
        row_ok = (y >= 0) & (y < H)
        row = base + y * s_h
        ok_l = (row_ok & (xs >= DIL) & (xs - DIL < W))[:, None] & c_ok[None, :]
        ok_m = (row_ok & (xs < W))[:, None] & c_ok[None, :]
        ok_r = (row_ok & (xs + DIL < W))[:, None] & c_ok[None, :]
        v_l = tl.load(row + ((xs - DIL) * s_w)[:, None], mask=ok_l, other=0.0).to(tl.float32)
        v_m = tl.load(row + (xs * s_w)[:, None], mask=ok_m, other=0.0).to(tl.float32)
        v_r = tl.load(row + ((xs + DIL) * s_w)[:, None], mask=ok_r, other=0.0).to(tl.float32)
        return v_l, v_m, v_r

    @triton.jit
    def _depthwise3x3_relu_kernel(
        src, weight, bias, dst, sums, H, W, C, DIL,
        s_n, s_h, s_w, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr, SUMS: tl.constexpr,
    ):  # fmt: skip
        """ROWS output rows spaced DIL apart (y0, y0 + DIL, ...) of one x-tile x channel-tile of a
        channels-last tensor. Output row y needs input rows y - DIL, y, y + DIL, so walking down
        the rows DIL at a time loads each input row once (ROWS + 2 loads for ROWS rows, instead
        of 3 per row) and keeps two partial sums: the row above's and this row's. The next input
        row's loads are issued before this row's store, so they are in flight while it is written
        (9-17% faster at R-50-D8's shapes, all but dilation 36's 4-row walk: bench/RESULTS.md).
        With SUMS, the program also writes the sum of the input over its own output pixels (one
        row of `sums` per program and image), from which the image pool's mean follows without
        another pass."""
        x_tiles, c_tiles = tl.cdiv(W, BLOCK_X), tl.cdiv(C, BLOCK_C)
        pid = tl.program_id(0)  # neighbouring programs: neighbouring channels of the same pixels
        c_tile, x_tile, group = pid % c_tiles, (pid // c_tiles) % x_tiles, pid // (c_tiles * x_tiles)
        y_first = group % DIL + (group // DIL) * ROWS * DIL
        xs = x_tile * BLOCK_X + tl.arange(0, BLOCK_X)
        cs = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
        n = tl.program_id(1).to(tl.int64)  # batch offsets pass 2**31 elements at batch 16+
        c_ok = cs < C
        mid_ok = xs < W
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
        v_l, v_m, v_r = _row_taps(base, y_first - DIL, H, W, xs, DIL, s_h, s_w, c_ok)
        for i in tl.static_range(ROWS + 2):
            y_in = y_first + (i - 1) * DIL
            if i + 1 < ROWS + 2:  # the next row's loads, in flight during this row's store
                n_l, n_m, n_r = _row_taps(base, y_in + DIL, H, W, xs, DIL, s_h, s_w, c_ok)
            if SUMS and i >= 1 and i <= ROWS:  # y_in is one of this program's output rows
                total += v_m
            if i >= 2:  # row y_in - DIL now has all three of its input rows
                y_out = y_in - DIL
                out = tl.maximum(above + w20 * v_l + w21 * v_m + w22 * v_r + b, 0.0)
                ok = ((y_out < H) & mid_ok)[:, None] & c_ok[None, :]
                tl.store(out_base + (y_out * W + xs)[:, None] * C, out.to(dst.dtype.element_ty), mask=ok)
            above = here + w10 * v_l + w11 * v_m + w12 * v_r
            here = w00 * v_l + w01 * v_m + w02 * v_r
            if i + 1 < ROWS + 2:
                v_l, v_m, v_r = n_l, n_m, n_r
        if SUMS:
            spatial = pid // c_tiles, tl.num_programs(0) // c_tiles  # this program's row of `sums`, rows per image
            tl.store(sums + (n * spatial[1] + spatial[0]) * C + cs, tl.sum(total, axis=0), mask=c_ok)


# (BLOCK_X, BLOCK_C, ROWS, num_warps). Undilated (the decoder's): of the tilings
# `bench.kernel_variants` times, the fastest at R-50-D8's two decoder shapes. Dilated (the ASPP's):
# one row group per residue class of the rows mod the dilation, so each input row is loaded
# (ROWS + 2) / ROWS times (the ROWS + 2 rows of the walk) instead of twice with 2 rows per group.
# Fixed, not autotuned per shape: autotuning slows start-up per bucket (bench/RESULTS.md).
DEPTHWISE_TILING = (32, 64, 11, 4)
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
    image pool, which would otherwise read its 2048-channel input once more (bench/RESULTS.md).
    The mean sums per-program partial sums (deterministic)."""
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

