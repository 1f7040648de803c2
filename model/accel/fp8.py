"""FP8 (e4m3) 3x3 convolutions on Hopper tensor cores, for the convs where cuDNN's fp16 is slowest.

The ASPP's bottleneck (2048 -> 512 channels, 3x3, at 1/8 resolution) is R-50-D8's largest conv.
PyTorch has no FP8 convolution; here it is one implicit GEMM, as fast as cuBLAS's FP8 GEMM of
the same size, whose amax and quantize passes replace the ASPP's fp16 concat (timings:
bench/RESULTS.md, `bench.kernel_variants --parts fp8conv`):

- `image_amax`: max |x| per image (a scale per image, so no image's result depends on its
  batch-mates), over one tensor or the list whose channel concat is the conv's input.
- `quantize_padded`: x * (448 / amax) as e4m3 (448 is e4m3's largest value), written with
  ``pad`` zero pixels around each image; a list of tensors is concatenated on the way, so the
  ASPP's fp16 concat is never written.
- `conv3x3_fp8`: flattened, padded pixel ``p``'s tap (ty, tx) is pixel
  ``p + (ty * Wp + tx) * dilation``, so each tap's A tile is a plain block of rows, loaded by
  TMA: 9 x C / 128 steps of an ordinary FP8 GEMM over the padded map. Rows that fall in the
  padding are computed and not stored (for a 128 x 256 map, 2.4% extra work at dilation 1, 9.6%
  at dilation 4). The epilogue applies the image's and the output channel's scale, the bias (and
  a residual) and ReLU, and writes fp16 channels-last.
Weights: e4m3 with one scale per output channel (scales per 128 input channels would rescale
the accumulator every K step, which is slower: bench/RESULTS.md).
The PyTorch reference (`conv3x3_fp8_reference`) computes the same quantized product in fp32;
the CPU path runs it. `tests/test_fp8.py` checks both against a float64 sum over the taps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels.borders import spread_borders_reference

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the PyTorch reference runs
    triton = None

E4M3_MAX = 448.0
K_STEP = 128  # input channels per GEMM step: channel counts must be multiples of it


def supported(device: torch.device | str) -> bool:
    """Whether `conv3x3_fp8`'s kernel runs on ``device``: Triton, CUDA, Hopper or newer (TMA)."""
    device = torch.device(device)
    return (
        triton is not None and device.type == "cuda" and torch.cuda.is_available()
        and torch.cuda.get_device_capability(device) >= (9, 0)
    )  # fmt: skip


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cout x C x 3 x 3 float -> (Cout x 9C e4m3 in (ty, tx, c) order, Cout float32 scales)."""
    w = weight.float().permute(0, 2, 3, 1).reshape(weight.shape[0], -1)
    scale = w.abs().amax(dim=1).clamp_min(1e-12) / E4M3_MAX
    return (w / scale[:, None]).to(torch.float8_e4m3fn), scale


def _image_scale(amax: torch.Tensor) -> torch.Tensor:
    """What an image's e4m3 values are multiplied by to get its activations back."""
    return torch.where(amax > 0, amax / E4M3_MAX, torch.ones_like(amax))


def _inverse_scale(amax: torch.Tensor) -> torch.Tensor:
    """What an image's activations are multiplied by before rounding to e4m3 (not a division:
    the kernel does the same fp32 multiply, so both round the same values)."""
    return torch.where(amax > 0, E4M3_MAX / amax, torch.ones_like(amax))


def _on_triton(tensors: list[torch.Tensor]) -> bool:
    return triton is not None and all(
        t.is_cuda and t.is_contiguous(memory_format=torch.channels_last) for t in tensors
    )


if triton is not None:
    from .kernels.borders import border_class

    @triton.jit
    def _image_amax_kernel(x, amax, HW, C, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
        n = tl.program_id(1)
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
        base = x + n.to(tl.int64) * HW * C
        m = tl.zeros([BLOCK_P, BLOCK_C], tl.float32)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            v = tl.load(base + p[:, None] * C + c[None, :], mask=(p < HW)[:, None] & (c < C)[None, :], other=0.0)
            m = tl.maximum(m, tl.abs(v.to(tl.float32)))
        tl.atomic_max(amax + n, tl.max(tl.max(m, axis=1), axis=0))

    @triton.jit
    def _quantize_padded_kernel(
        x, amax, q, P, H, W, C, C_DST, OFFSET, Hp, Wp, PAD, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        """Channels-last N x H x W x C into channels OFFSET.. of the padded N x Hp x Wp x C_DST."""
        p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # int32 index math: P < 2**31
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        n = p // (Hp * Wp)
        hw = p - n * (Hp * Wp)
        h = hw // Wp - PAD
        w = hw % Wp - PAD
        inside = (p < P) & (h >= 0) & (h < H) & (w >= 0) & (w < W)
        ok = (c < C)[None, :]
        src = x + ((n * H + h) * W + w).to(tl.int64)[:, None] * C + c[None, :]
        v = tl.load(src, mask=inside[:, None] & ok, other=0.0)
        a = tl.load(amax + n, mask=p < P, other=0.0)
        inverse = tl.where(a > 0, tl.math.div_rn(448.0, a), 1.0)
        qv = (v.to(tl.float32) * inverse[:, None]).to(tl.float8e4nv)
        tl.store(q + p.to(tl.int64)[:, None] * C_DST + OFFSET + c[None, :], qv, mask=(p < P)[:, None] & ok)

    @triton.jit
    def _conv3x3_fp8_kernel(
        a_desc, amax, b_desc, sb, bias, res, out, P, H, W, C, COUT, Hp, Wp, DIL,
        RESIDUAL: tl.constexpr, RELU: tl.constexpr, PROMOTE_EVERY: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SWIZZLE: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        tiles_m = tl.cdiv(P, BM)
        tiles_n = tl.cdiv(COUT, BN)
        per_band = SWIZZLE * tiles_n  # consecutive programs share A rows and sweep all of B
        first_m = pid // per_band * SWIZZLE
        band_m = tl.minimum(tiles_m - first_m, SWIZZLE)
        pid_m = first_m + (pid % per_band) % band_m
        pid_n = (pid % per_band) // band_m
        rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
        n = rows // (Hp * Wp)
        h = (rows // Wp) % Hp
        w = rows % Wp
        stored = (rows < P) & (h < H) & (w < W)
        if tl.max(stored.to(tl.int32), axis=0) > 0:  # tiles all in the bottom padding are skipped
            steps = C // BK
            acc = tl.zeros([BM, BN], dtype=tl.float32)
            for i in range(9 * steps):
                tap = i // steps
                k = (i % steps) * BK
                a = a_desc.load([pid_m * BM + ((tap // 3) * Wp + tap % 3) * DIL, k])  # rows past P read as 0
                b = b_desc.load([pid_n * BN, tap * C + k])
                acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=PROMOTE_EVERY)
            cols = pid_n * BN + tl.arange(0, BN)
            a_max = tl.load(amax + n, mask=rows < P, other=0.0)
            a_scale = tl.where(a_max > 0, tl.math.div_rn(a_max, 448.0), 1.0)
            y = acc * a_scale[:, None] * tl.load(sb + cols, mask=cols < COUT, other=0.0)[None, :]
            y += tl.load(bias + cols, mask=cols < COUT, other=0.0).to(tl.float32)[None, :]
            dst = ((n * H + h) * W + w)[:, None] * COUT + cols[None, :]
            ok = stored[:, None] & (cols < COUT)[None, :]
            if RESIDUAL == 1:  # a full N x H x W x COUT map
                y += tl.load(res + dst, mask=ok, other=0.0).to(tl.float32)
            if RESIDUAL == 2:  # N x min(H, 3) x min(W, 3) x COUT: first / middle / last row and column
                sy, sx = border_class(h, H), border_class(w, W)
                small = ((n * tl.minimum(H, 3) + sy) * tl.minimum(W, 3) + sx)[:, None] * COUT + cols[None, :]
                y += tl.load(res + small, mask=ok, other=0.0).to(tl.float32)
            if RELU:
                y = tl.maximum(y, 0.0)
            tl.store(out + dst, y.to(tl.float16), mask=ok)


def image_amax(tensors: list[torch.Tensor]) -> torch.Tensor:
    """max |x| of each image over all of ``tensors`` (N x C_i x H x W each): N float32."""
    if not _on_triton(tensors):
        return torch.stack([t.float().abs().amax(dim=(1, 2, 3)) for t in tensors]).amax(0)
    n, _, h, w = tensors[0].shape
    amax = torch.zeros(n, dtype=torch.float32, device=tensors[0].device)
    for t in tensors:
        grid = (triton.cdiv(h * w, 64), n)
        _image_amax_kernel[grid](t, amax, h * w, t.shape[1], BLOCK_P=64, BLOCK_C=128)
    return amax


def quantize_padded_reference(tensors: list[torch.Tensor], amax: torch.Tensor, pad: int) -> torch.Tensor:
    x = torch.cat([t.float() for t in tensors], dim=1).permute(0, 2, 3, 1)
    x = F.pad(x, (0, 0, pad, pad, pad, pad)) * _inverse_scale(amax)[:, None, None, None]
    return x.to(torch.float8_e4m3fn).contiguous()


def quantize_padded(tensors: list[torch.Tensor], amax: torch.Tensor, pad: int) -> torch.Tensor:
    """The channel concat of ``tensors`` as e4m3 N x (H + 2 pad) x (W + 2 pad) x C, each image
    scaled by its ``amax`` / 448, ``pad`` zero pixels around it."""
    if not _on_triton(tensors):
        return quantize_padded_reference(tensors, amax, pad)
    n, _, h, w = tensors[0].shape
    c_total = sum(t.shape[1] for t in tensors)
    hp, wp = h + 2 * pad, w + 2 * pad
    q = torch.empty((n, hp, wp, c_total), dtype=torch.float8_e4m3fn, device=amax.device)
    offset, block_p = 0, 32
    for t in tensors:
        c = t.shape[1]
        block_c = triton.next_power_of_2(min(c, 128))
        grid = (triton.cdiv(n * hp * wp, block_p), triton.cdiv(c, block_c))
        _quantize_padded_kernel[grid](
            t, amax, q, n * hp * wp, h, w, c, c_total, offset, hp, wp, pad, BLOCK_P=block_p, BLOCK_C=block_c,
        )  # fmt: skip
        offset += c
    return q


def conv3x3_fp8_reference(
    q: torch.Tensor, amax: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor, dilation: int, residual: torch.Tensor | None, relu: bool,
) -> torch.Tensor:  # fmt: skip
    """What `conv3x3_fp8` computes, in fp32 PyTorch (the result in ``bias``' dtype)."""
    x = (q.float() * _image_scale(amax)[:, None, None, None]).permute(0, 3, 1, 2)
    cout = weight_q.shape[0]
    w = (weight_q.float() * weight_scale[:, None]).reshape(cout, 3, 3, -1).permute(0, 3, 1, 2)
    y = F.conv2d(x, w, bias.float(), dilation=dilation)
    if residual is not None and residual.shape[2:] != y.shape[2:]:
        residual = spread_borders_reference(residual, y.shape[2:])
    if residual is not None:
        y = y + residual.float()
    y = F.relu(y) if relu else y
    return y.to(bias.dtype).contiguous(memory_format=torch.channels_last)


# (BM, BN, num_warps, num_stages, SWIZZLE): the fastest of `bench.kernel_variants --parts fp8conv`
# at R-50-D8's bottleneck and layer4 shapes on an H100
CONV_TILING = (128, 256, 8, 4, 8)


def conv3x3_fp8(
    q: torch.Tensor, amax: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor, dilation: int, residual: torch.Tensor | None = None, relu: bool = True,
    tiling: tuple[int, int, int, int, int] = CONV_TILING, promote_every: int | None = None,
) -> torch.Tensor:  # fmt: skip
    """relu(conv3x3(x, dilation, padding = dilation) + bias (+ residual)) from x's
    `quantize_padded` (pad = dilation) and `image_amax`: N x Cout x H x W fp16, channels-last.
    A residual smaller than the output (at most 3 x 3) is spread over it as by
    `model.accel.kernels.spread_borders`, without that full-size map ever being written.

    ``promote_every``: None lets the tensor cores accumulate the whole K (Triton's default on
    sm90; their FP8 accumulator keeps fewer bits than fp32); 128 adds into a true fp32
    accumulator every 128 products: more exact, but slower (both measured in bench/RESULTS.md)."""
    if triton is None or not q.is_cuda:
        return conv3x3_fp8_reference(q, amax, weight_q, weight_scale, bias, dilation, residual, relu)
    from triton.tools.tensor_descriptor import TensorDescriptor

    n, hp, wp, c = q.shape
    h, w = hp - 2 * dilation, wp - 2 * dilation
    cout = weight_q.shape[0]
    out = torch.empty((n, cout, h, w), dtype=torch.float16, device=q.device, memory_format=torch.channels_last)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    spread = residual is not None and residual.shape[2:] != (h, w)
    bm, bn, warps, stages, swizzle = tiling
    p = n * hp * wp
    a_desc = TensorDescriptor.from_tensor(q.view(p, c), [bm, K_STEP])
    b_desc = TensorDescriptor.from_tensor(weight_q, [bn, K_STEP])
    grid = (triton.cdiv(p, bm) * triton.cdiv(cout, bn),)
    _conv3x3_fp8_kernel[grid](
        a_desc, amax, b_desc, weight_scale, bias, out if residual is None else residual, out,
        p, h, w, c, cout, hp, wp, dilation, RESIDUAL=0 if residual is None else 2 if spread else 1, RELU=relu, PROMOTE_EVERY=promote_every,
        BM=bm, BN=bn, BK=K_STEP, SWIZZLE=swizzle, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out
