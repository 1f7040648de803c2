"""The separable convs' depthwise 3x3 (+ bias + ReLU), any dilation, in one pass over channels-last input."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .common import _on_triton, tl, triton


def depthwise3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, dilation: int) -> torch.Tensor:
    return F.relu(F.conv2d(x, weight, bias, 1, dilation, dilation, x.shape[1]))


if triton is not None:

    @triton.jit
    def _shifted(row, row_ok, xs, SHIFT, W, s_w, c_ok):
        """The input row at x + SHIFT for the tile's pixels x, as fp32 (zeros outside the image)."""
        ok = (row_ok & (xs + SHIFT >= 0) & (xs + SHIFT < W))[:, None] & c_ok[None, :]
        return tl.load(row + ((xs + SHIFT) * s_w)[:, None], mask=ok, other=0.0).to(tl.float32)

    @triton.jit
    def _row_taps(base, y, H, W, xs, DIL, s_h, s_w, c_ok):
        """Input row y at x - DIL, x and x + DIL for the tile's pixels x, as fp32 (zeros outside the image)."""
        row_ok = (y >= 0) & (y < H)
        row = base + y * s_h
        return _shifted(row, row_ok, xs, -DIL, W, s_w, c_ok), _shifted(row, row_ok, xs, 0, W, s_w, c_ok), _shifted(
            row, row_ok, xs, DIL, W, s_w, c_ok
        )

    @triton.jit
    def _taps9(weight, cs, c_ok):
        """A depthwise 3x3 conv's 9 taps (row-major) for the tile's channels, as fp32 rows."""
        t = weight + cs * 9
        return (
            tl.load(t + 0, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 1, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 2, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 3, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 4, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 5, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 6, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 7, mask=c_ok, other=0.0).to(tl.float32)[None, :],
            tl.load(t + 8, mask=c_ok, other=0.0).to(tl.float32)[None, :],
        )

    @triton.jit
    def _store_relu(out_base, acc, bias, y, H, W, xs, C, c_ok):
        """relu(acc + bias) as output row y of the tile (rows past the image are not written)."""
        ok = ((y < H) & (xs < W))[:, None] & c_ok[None, :]
        tl.store(out_base + (y * W + xs)[:, None] * C, tl.maximum(acc + bias, 0.0).to(out_base.dtype.element_ty), mask=ok)

    @triton.jit
    def _depthwise3x3_relu_kernel(
        src, weight, bias, dst, H, W, C, DIL,
        s_n, s_h, s_w, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        """ROWS output rows spaced DIL apart (y0, y0 + DIL, ...) of one x-tile x channel-tile of a
        channels-last tensor. Output row y needs input rows y - DIL, y, y + DIL, so walking down
        the rows DIL at a time loads each input row once (ROWS + 2 loads for ROWS rows, instead
        of 3 per row) and keeps two partial sums: the row above's and this row's. The next input
        row's loads are issued before this row's store, so they are in flight while it is written
        (9-17% faster at R-50-D8's shapes, all but dilation 36's 4-row walk: bench/RESULTS.md)."""
        x_tiles, c_tiles = tl.cdiv(W, BLOCK_X), tl.cdiv(C, BLOCK_C)
        pid = tl.program_id(0)  # neighbouring programs: neighbouring channels of the same pixels
        c_tile, x_tile, group = pid % c_tiles, (pid // c_tiles) % x_tiles, pid // (c_tiles * x_tiles)
        y_first = group % DIL + (group // DIL) * ROWS * DIL
        xs = x_tile * BLOCK_X + tl.arange(0, BLOCK_X)
        cs = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
        n = tl.program_id(1).to(tl.int64)  # batch offsets pass 2**31 elements at batch 16+
        c_ok = cs < C
        w00, w01, w02, w10, w11, w12, w20, w21, w22 = _taps9(weight, cs, c_ok)
        b = tl.load(bias + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        above = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)  # partial sum of output row y_in - DIL
        here = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)  # partial sum of output row y_in
        base = src + n * s_n + cs[None, :]
        out_base = dst + n * H * W * C + cs[None, :]
        v_l, v_m, v_r = _row_taps(base, y_first - DIL, H, W, xs, DIL, s_h, s_w, c_ok)
        for i in tl.static_range(ROWS + 2):
            y_in = y_first + (i - 1) * DIL
            if i + 1 < ROWS + 2:  # the next row's loads, in flight during this row's store
                n_l, n_m, n_r = _row_taps(base, y_in + DIL, H, W, xs, DIL, s_h, s_w, c_ok)
            if i >= 2:  # row y_in - DIL now has all three of its input rows
                _store_relu(out_base, above + w20 * v_l + w21 * v_m + w22 * v_r, b, y_in - DIL, H, W, xs, C, c_ok)
            above = here + w10 * v_l + w11 * v_m + w12 * v_r
            here = w00 * v_l + w01 * v_m + w02 * v_r
            if i + 1 < ROWS + 2:
                v_l, v_m, v_r = n_l, n_m, n_r

    @triton.jit
    def _row_taps7(base, y, H, W, xs, D, s_h, s_w, c_ok):
        """Input row y at x - 3D, x - 2D, x - D, x, x + D, x + 2D, x + 3D: the column taps of
        dilations D, 2D and 3D, as fp32 (zeros outside the image)."""
        row_ok = (y >= 0) & (y < H)
        row = base + y * s_h
        return (
            _shifted(row, row_ok, xs, -3 * D, W, s_w, c_ok), _shifted(row, row_ok, xs, -2 * D, W, s_w, c_ok),
            _shifted(row, row_ok, xs, -D, W, s_w, c_ok), _shifted(row, row_ok, xs, 0, W, s_w, c_ok),
            _shifted(row, row_ok, xs, D, W, s_w, c_ok), _shifted(row, row_ok, xs, 2 * D, W, s_w, c_ok),
            _shifted(row, row_ok, xs, 3 * D, W, s_w, c_ok),
        )  # fmt: skip

    @triton.jit
    def _aspp_depthwise_kernel(
        src, weight, bias, dst, sums, H, W, C, D,
        s_n, s_h, s_w, BLOCK_X: tl.constexpr, BLOCK_C: tl.constexpr, ROWS: tl.constexpr,
    ):  # fmt: skip
        """The ASPP's three depthwise convs (dilations D, 2D, 3D: mmseg's 12, 24, 36 or 6, 12, 18)
        in one pass over their common input. A program walks ROWS output rows spaced D apart, as
        `_depthwise3x3_relu_kernel` does for one dilation: dilation kD's taps of output row j
        are the input rows k steps above and below, so each input row is loaded once for all
        three (at x + mD, m = -3..3) and each branch keeps 2k partial sums (12 in all), one of
        its output rows completed per step. Branch k's output is ``dst``'s k-th block of N
        images. Also writes the sum of the input over the program's own output pixels (one row
        of ``sums`` per program and image): the image pool's mean, without another pass."""
        x_tiles, c_tiles = tl.cdiv(W, BLOCK_X), tl.cdiv(C, BLOCK_C)
        pid = tl.program_id(0)  # neighbouring programs: neighbouring channels of the same pixels
        c_tile, x_tile, group = pid % c_tiles, (pid // c_tiles) % x_tiles, pid // (c_tiles * x_tiles)
        y_first = group % D + (group // D) * ROWS * D
        xs = x_tile * BLOCK_X + tl.arange(0, BLOCK_X)
        cs = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
        n = tl.program_id(1).to(tl.int64)  # batch offsets pass 2**31 elements at batch 16+
        c_ok = cs < C
        a0, a1, a2, a3, a4, a5, a6, a7, a8 = _taps9(weight, cs, c_ok)
        b0, b1, b2, b3, b4, b5, b6, b7, b8 = _taps9(weight + 9 * C, cs, c_ok)
        e0, e1, e2, e3, e4, e5, e6, e7, e8 = _taps9(weight + 18 * C, cs, c_ok)
        bias_a = tl.load(bias + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        bias_b = tl.load(bias + C + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        bias_e = tl.load(bias + 2 * C + cs, mask=c_ok, other=0.0).to(tl.float32)[None, :]
        zero = tl.zeros([BLOCK_X, BLOCK_C], tl.float32)
        # partial sums before input row t (walk index; y = y_first + t * D): dilation D of output
        # rows t - 1, t; 2D of rows t - 2 .. t + 1; 3D of rows t - 3 .. t + 2
        p0, p1 = zero, zero
        q0, q1, q2, q3 = zero, zero, zero, zero
        r0, r1, r2, r3, r4, r5 = zero, zero, zero, zero, zero, zero
        total = zero
        base = src + n * s_n + cs[None, :]
        out_a = dst + n * H * W * C + cs[None, :]
        out_b = out_a + tl.num_programs(1) * H * W * C
        out_e = out_b + tl.num_programs(1) * H * W * C
        m3, m2, m1, c0, c1, c2, c3 = _row_taps7(base, y_first - 3 * D, H, W, xs, D, s_h, s_w, c_ok)
        for i in tl.static_range(ROWS + 6):
            t = i - 3
            y_in = y_first + t * D
            if i + 1 < ROWS + 6:  # the next row's loads, in flight during this row's stores
                n3, n2, n1, n0, o1, o2, o3 = _row_taps7(base, y_in + D, H, W, xs, D, s_h, s_w, c_ok)
            if t >= 0 and t < ROWS:  # one of this program's output rows
                total += c0
            if t >= 1 and t <= ROWS:  # dilation D's row t - 1 is complete
                _store_relu(out_a, p0 + a6 * m1 + a7 * c0 + a8 * c1, bias_a, y_in - D, H, W, xs, C, c_ok)
            p0, p1 = p1 + a3 * m1 + a4 * c0 + a5 * c1, a0 * m1 + a1 * c0 + a2 * c1
            if t >= 2 and t <= ROWS + 1:  # dilation 2D's row t - 2 is complete
                _store_relu(out_b, q0 + b6 * m2 + b7 * c0 + b8 * c2, bias_b, y_in - 2 * D, H, W, xs, C, c_ok)
            q0, q1, q2, q3 = q1, q2 + b3 * m2 + b4 * c0 + b5 * c2, q3, b0 * m2 + b1 * c0 + b2 * c2
            if t >= 3:  # dilation 3D's row t - 3 is complete
                _store_relu(out_e, r0 + e6 * m3 + e7 * c0 + e8 * c3, bias_e, y_in - 3 * D, H, W, xs, C, c_ok)
            r0, r1, r2, r3, r4, r5 = r1, r2, r3 + e3 * m3 + e4 * c0 + e5 * c3, r4, r5, e0 * m3 + e1 * c0 + e2 * c3
            if i + 1 < ROWS + 6:
                m3, m2, m1, c0, c1, c2, c3 = n3, n2, n1, n0, o1, o2, o3
        spatial = pid // c_tiles, tl.num_programs(0) // c_tiles  # this program's row of `sums`, rows per image
        tl.store(sums + (n * spatial[1] + spatial[0]) * C + cs, tl.sum(total, axis=0), mask=c_ok)


# (BLOCK_X, BLOCK_C, ROWS, num_warps). Undilated (the decoder's): of the tilings
# `bench.kernel_variants` times, the fastest at R-50-D8's two decoder shapes. Dilated: one row
# group per residue class of the rows mod the dilation, so each input row is loaded (ROWS + 2) /
# ROWS times (the ROWS + 2 rows of the walk) instead of twice with 2 rows per group; the ASPP's
# fused pass (ASPP_BLOCKS) walks the same way with the smallest of its three dilations.
# Fixed, not autotuned per shape: autotuning slows start-up per bucket (bench/RESULTS.md).
DEPTHWISE_TILING = (32, 64, 11, 4)
DILATED_BLOCKS = (32, 64, 4)  # (BLOCK_X, BLOCK_C, num_warps); ROWS = ceil(H / dilation), at most MAX_ROWS
ASPP_BLOCKS = (32, 64, 8)
MAX_ROWS = 16


def _walk_rows(height: int, dilation: int) -> int:
    return min(-(-height // dilation), MAX_ROWS)


def depthwise_tiling(height: int, dilation: int) -> tuple[int, int, int, int]:
    if dilation == 1:
        return DEPTHWISE_TILING
    block_x, block_c, warps = DILATED_BLOCKS
    return block_x, block_c, _walk_rows(height, dilation), warps


def aspp_tiling(height: int, dilation: int) -> tuple[int, int, int, int]:
    block_x, block_c, warps = ASPP_BLOCKS
    return block_x, block_c, _walk_rows(height, dilation), warps


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
    n, c, h, w = x.shape
    block_x, block_c, rows, warps = tiling or depthwise_tiling(h, dilation)
    out = torch.empty_like(x, memory_format=torch.channels_last)
    _depthwise3x3_relu_kernel[_grid(x, dilation, block_x, block_c, rows)](
        x, weight.contiguous(), bias, out, h, w, c, dilation, x.stride(0), x.stride(2), x.stride(3),
        BLOCK_X=block_x, BLOCK_C=block_c, ROWS=rows, num_warps=warps,
    )  # fmt: skip
    return out


def aspp_depthwise3x3_relu(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    dilation: int,
    tiling: tuple[int, int, int, int] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The ASPP's three separable branches' depthwise halves, `depthwise3x3_relu` at dilations
    ``dilation`` x 1, 2, 3 (``weight``: 3 x C x 9, row-major taps; ``bias``: 3 x C), and x's mean over
    each image and channel (N x C, float32: the image pool's). On CUDA with channels-last input
    one Triton pass, which reads the 2048-channel input once for all four instead of four times
    (bench/RESULTS.md); the mean sums per-program partial sums (deterministic)."""
    if not _on_triton(x):
        taps = weight.view(3, -1, 1, 3, 3)
        outs = [depthwise3x3_reference(x, taps[k], bias[k], dilation * (k + 1)) for k in range(3)]
        return outs, x.float().mean(dim=(2, 3))
    n, c, h, w = x.shape
    block_x, block_c, rows, warps = tiling or aspp_tiling(h, dilation)
    out = torch.empty((3 * n, c, h, w), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    grid = _grid(x, dilation, block_x, block_c, rows)
    partial = torch.empty((n, grid[0] // triton.cdiv(c, block_c), c), dtype=torch.float32, device=x.device)
    _aspp_depthwise_kernel[grid](
        x, weight.contiguous(), bias.contiguous(), out, partial, h, w, c, dilation, x.stride(0), x.stride(2),
        x.stride(3), BLOCK_X=block_x, BLOCK_C=block_c, ROWS=rows, num_warps=warps,
    )  # fmt: skip
    return list(out.chunk(3)), partial.sum(dim=1) / (h * w)


def _grid(x: torch.Tensor, dilation: int, block_x: int, block_c: int, rows: int) -> tuple[int, int]:
    """One program per row group (ROWS rows of one residue class mod the dilation), x-tile and
    channel-tile, per image."""
    n, c, h, w = x.shape
    row_groups = dilation * triton.cdiv(triton.cdiv(h, dilation), rows)
    return row_groups * triton.cdiv(w, block_x) * triton.cdiv(c, block_c), n
