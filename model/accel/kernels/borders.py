"""A 3 x 3 map spread over the border/interior regions of a full-size map: a 3x3 conv (padding 1)
of a constant map, computed on 3 x 3 pixels only."""

from __future__ import annotations

import torch

from .common import on_kernel_device, tl, triton

if triton is not None:

    @triton.jit
    def border_class(i, size):
        """Row (or column) ``i`` of ``size`` -> the row of `spread_borders`' small map it takes:
        0 for the first, min(size, 3) - 1 for the last, 1 between."""
        return tl.where(i == 0, 0, tl.where(i == size - 1, tl.minimum(size, 3) - 1, 1))


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
    pass writing channels-last (PyTorch's broadcast copy into the 9 regions is slower: bench/RESULTS.md)."""
    if not on_kernel_device(small):
        return spread_borders_reference(small, size)
    n, c = small.shape[:2]
    h, w = size
    out = torch.empty((n, c, h, w), dtype=small.dtype, device=small.device, memory_format=torch.channels_last)
    block_p, block_c = 32, 128
    grid = (triton.cdiv(h * w, block_p), triton.cdiv(c, block_c), n)
    _spread_borders_kernel[grid](small, out, c, h, w, *small.stride(), BLOCK_P=block_p, BLOCK_C=block_c)
    return out

