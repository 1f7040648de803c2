"""FP8 (e4m3) convolutions on Hopper tensor cores, for the convs where cuDNN's fp16 is slowest.

The ASPP's bottleneck (2048 -> 512 channels, 3x3, at 1/8 resolution) is R-50-D8's largest conv,
and layer4's ten convs at the same resolution come next. PyTorch has no FP8 convolution; here
each is one implicit GEMM (timings: bench/RESULTS.md, `bench.kernel_variants --parts fp8conv
fp8block`):

- `image_amax`: max |x| per image (a scale per image, so no image's result depends on its
  batch-mates), over one tensor or the list whose channel concat is the conv's input.
- `quantize_padded`: x * (448 / amax) as e4m3 (448 is e4m3's largest value), written with
  ``pad`` zero pixels around each image; a list of tensors is concatenated on the way, so the
  ASPP's fp16 concat is never written. ``amax`` is one value per image, or one static bound
  (values past it saturate).
- `conv_fp8`: a 3x3 conv (dilation = the input's padding) or a 1x1 conv. Flattened, padded pixel
  ``p``'s tap (ty, tx) is pixel ``p + (ty * Wp + tx) * dilation``, so each tap's A tile is a
  plain block of rows, loaded by TMA: 9 x C / 128 steps of an ordinary FP8 GEMM over the padded
  map (a 1x1 conv takes the centre tap only). Rows that fall in the padding are computed and not
  stored (for a 128 x 256 map, 2.4% extra work at dilation 1, 9.6% at dilation 4). The epilogue
  applies the image's and the output channel's scale, the bias (and a residual) and ReLU, and
  writes fp16 channels-last and/or e4m3 scaled by the static bound of the next conv's input
  (padded as that conv reads it): a chain of FP8 convs has no amax or quantize pass between
  them. A 1x1 conv on an unpadded map with unpadded results (most of layer4's) runs as a
  persistent GEMM instead, one program per SM, its epilogue overlapping the next tile's loads
  and going out through TMA: with 2048 output channels and only four K steps per tile, the
  one-program-per-tile kernel took 2-3x cuDNN's time there.
Weights: e4m3 with one scale per output channel (scales per 128 input channels would rescale
the accumulator every K step, which is slower: bench/RESULTS.md).
The PyTorch reference (`conv_fp8_reference`) computes the same quantized product in fp32;
the CPU path runs it. `tests/test_fp8.py` checks both against a float64 sum over the taps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .kernels.borders import spread_borders_reference
from .kernels.common import on_kernel_device

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
    return all(on_kernel_device(t) and t.is_contiguous(memory_format=torch.channels_last) for t in tensors)


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
        x, amax, AMAX_STRIDE, q, P, H, W, C, C_DST, OFFSET, Hp, Wp, PAD, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
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
        a = tl.load(amax + n * AMAX_STRIDE, mask=p < P, other=0.0)
        inverse = tl.where(a > 0, tl.math.div_rn(448.0, a), 1.0)
        qv = tl.minimum(tl.maximum(v.to(tl.float32) * inverse[:, None], -448.0), 448.0).to(tl.float8e4nv)
        tl.store(q + p.to(tl.int64)[:, None] * C_DST + OFFSET + c[None, :], qv, mask=(p < P)[:, None] & ok)

    @triton.jit
    def _conv_fp8_kernel(
        a_desc, amax, AMAX_STRIDE, b_desc, sb, bias, res, out, q_out, q_amax, P, H, W, C, COUT, Hp, Wp, PAD, QPAD,
        FIRST_TAP: tl.constexpr, TAPS: tl.constexpr, RESIDUAL: tl.constexpr, RELU: tl.constexpr,
        OUT_FP16: tl.constexpr, OUT_FP8: tl.constexpr, PROMOTE_EVERY: tl.constexpr,
        BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SWIZZLE: tl.constexpr,
    ):  # fmt: skip
        pid_m, pid_n = _tile_of(tl.program_id(0), SWIZZLE * tl.cdiv(COUT, BN), tl.cdiv(P, BM), SWIZZLE)
        rows = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
        n = rows // (Hp * Wp)
        h = (rows // Wp) % Hp
        w = rows % Wp
        stored = (rows < P) & (h < H) & (w < W)
        if tl.max(stored.to(tl.int32), axis=0) > 0:  # tiles all in the bottom padding are skipped
            steps = C // BK
            acc = tl.zeros([BM, BN], dtype=tl.float32)
            for i in range(TAPS * steps):
                tap = FIRST_TAP + i // steps  # of the 3 x 3 window, dilation PAD: a 1 x 1 conv is its centre, 4
                k = (i % steps) * BK
                a = a_desc.load([pid_m * BM + ((tap // 3) * Wp + tap % 3) * PAD, k])  # rows past P read as 0
                b = b_desc.load([pid_n * BN, (i // steps) * C + k])
                acc = tl.dot(a, b.T, acc, max_num_imprecise_acc=PROMOTE_EVERY)
            cols = pid_n * BN + tl.arange(0, BN)
            a_max = tl.load(amax + n * AMAX_STRIDE, mask=rows < P, other=0.0)
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
            if OUT_FP16:
                tl.store(out + dst, y.to(tl.float16), mask=ok)
            if OUT_FP8:  # the next conv's input: scaled by its static amax, saturated, QPAD zero pixels around
                qv = _to_e4m3(y, tl.load(q_amax))
                q_dst = ((n * (H + 2 * QPAD) + h + QPAD) * (W + 2 * QPAD) + w + QPAD)[:, None] * COUT + cols[None, :]
                tl.store(q_out + q_dst, qv, mask=ok)


    @triton.jit
    def _to_e4m3(y, amax):
        """y scaled by 448 / amax (a static bound of it), saturated at e4m3's +-448 and rounded."""
        scaled = y * tl.where(amax > 0, tl.math.div_rn(448.0, amax), 1.0)
        return tl.minimum(tl.maximum(scaled, -448.0), 448.0).to(tl.float8e4nv)

    @triton.jit
    def _tile_of(tile, per_band, tiles_m, SWIZZLE: tl.constexpr):
        """Tile ``tile``'s (row, column) block: SWIZZLE consecutive row blocks share a sweep of B
        (``per_band`` = SWIZZLE x column blocks), so consecutive programs reuse A rows in L2."""
        first_m = tile // per_band * SWIZZLE
        band_m = tl.minimum(tiles_m - first_m, SWIZZLE)
        return first_m + (tile % per_band) % band_m, (tile % per_band) // band_m

    @triton.jit
    def _pointwise_epilogue(
        y, a_scale, row0, col0, sb, bias, res_desc, out_desc, q_desc, q_amax, COUT,
        RESIDUAL: tl.constexpr, RELU: tl.constexpr, OUT_FP16: tl.constexpr, OUT_FP8: tl.constexpr, BN: tl.constexpr,
    ):  # fmt: skip
        cols = col0 + tl.arange(0, BN)
        y = y * a_scale[:, None] * tl.load(sb + cols, mask=cols < COUT, other=0.0)[None, :]
        y += tl.load(bias + cols, mask=cols < COUT, other=0.0).to(tl.float32)[None, :]
        if RESIDUAL:
            y += res_desc.load([row0, col0]).to(tl.float32)
        if RELU:
            y = tl.maximum(y, 0.0)
        if OUT_FP16:
            out_desc.store([row0, col0], y.to(tl.float16))
        if OUT_FP8:
            q_desc.store([row0, col0], _to_e4m3(y, tl.load(q_amax)))

    @triton.jit
    def _pointwise_fp8_kernel(
        a_desc, amax, AMAX_STRIDE, b_desc, sb, bias, res_desc, out_desc, q_desc, q_amax, P, HW, C, COUT,
        NUM_SMS: tl.constexpr, RESIDUAL: tl.constexpr, RELU: tl.constexpr, OUT_FP16: tl.constexpr,
        OUT_FP8: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, SWIZZLE: tl.constexpr,
    ):  # fmt: skip
        """A 1x1 conv on an unpadded map as a persistent GEMM: one program per SM walks the tiles,
        the loop flattened so the next tile's loads overlap this tile's epilogue, which goes out in
        two halves through TMA (the residual comes in the same way)."""
        start = tl.program_id(0)
        tiles_m = tl.cdiv(P, BM)
        tiles_n = tl.cdiv(COUT, BN)
        per_band = SWIZZLE * tiles_n
        steps = C // BK
        done = start - NUM_SMS  # the epilogue's own tile counter: the pipeliner overlaps it with the loads
        for tile in tl.range(start, tiles_m * tiles_n, NUM_SMS, flatten=True):
            pid_m, pid_n = _tile_of(tile, per_band, tiles_m, SWIZZLE)
            acc = tl.zeros([BM, BN], dtype=tl.float32)
            for ki in range(steps):
                a = a_desc.load([pid_m * BM, ki * BK])
                b = b_desc.load([pid_n * BN, ki * BK])
                acc = tl.dot(a, b.T, acc)
            done += NUM_SMS
            pid_m, pid_n = _tile_of(done, per_band, tiles_m, SWIZZLE)
            rows = pid_m * BM + tl.arange(0, BM)
            a_max = tl.load(amax + (rows // HW) * AMAX_STRIDE, mask=rows < P, other=0.0)
            a_scale = tl.where(a_max > 0, tl.math.div_rn(a_max, 448.0), 1.0)
            left, right = tl.split(tl.permute(tl.reshape(acc, (BM, 2, BN // 2)), (0, 2, 1)))
            _pointwise_epilogue(
                left, a_scale, pid_m * BM, pid_n * BN, sb, bias, res_desc, out_desc, q_desc, q_amax, COUT,
                RESIDUAL, RELU, OUT_FP16, OUT_FP8, BN // 2,
            )  # fmt: skip
            _pointwise_epilogue(
                right, a_scale, pid_m * BM, pid_n * BN + BN // 2, sb, bias, res_desc, out_desc, q_desc, q_amax, COUT,
                RESIDUAL, RELU, OUT_FP16, OUT_FP8, BN // 2,
            )  # fmt: skip


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


def _saturated_e4m3(x: torch.Tensor) -> torch.Tensor:
    """x rounded to e4m3, values past its range clamped to +-448 (a static amax can be exceeded)."""
    return x.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_padded_reference(tensors: list[torch.Tensor], amax: torch.Tensor, pad: int) -> torch.Tensor:
    x = torch.cat([t.float() for t in tensors], dim=1).permute(0, 2, 3, 1)
    x = F.pad(x, (0, 0, pad, pad, pad, pad)) * _inverse_scale(amax)[:, None, None, None]
    return _saturated_e4m3(x).contiguous()


def quantize_padded(tensors: list[torch.Tensor], amax: torch.Tensor, pad: int) -> torch.Tensor:
    """The channel concat of ``tensors`` as e4m3 N x (H + 2 pad) x (W + 2 pad) x C, each image
    scaled by 448 / ``amax`` (N values: `image_amax`; or one, a static bound: values past it saturate),
    ``pad`` zero pixels around it."""
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
            t, amax, _stride(amax), q, n * hp * wp, h, w, c, c_total, offset, hp, wp, pad,
            BLOCK_P=block_p, BLOCK_C=block_c,
        )  # fmt: skip
        offset += c
    return q


def _stride(amax: torch.Tensor) -> int:
    """0 for one static amax shared by every image, 1 for an amax per image."""
    return 0 if amax.numel() == 1 else 1


def conv_fp8_reference(
    q: torch.Tensor, amax: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor, kernel_size: int, pad: int, residual: torch.Tensor | None, relu: bool,
    out_amax: torch.Tensor | None = None, out_pad: int = 0, fp16_out: bool = True,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """What `conv_fp8` computes, in fp32 PyTorch (the result in ``bias``' dtype)."""
    x = (q.float() * _image_scale(amax)[:, None, None, None]).permute(0, 3, 1, 2)
    cout = weight_q.shape[0]
    w = (weight_q.float() * weight_scale[:, None]).reshape(cout, kernel_size, kernel_size, -1).permute(0, 3, 1, 2)
    if kernel_size == 1:
        x = x[:, :, pad : x.shape[2] - pad, pad : x.shape[3] - pad]
    y = F.conv2d(x, w, bias.float(), dilation=max(pad, 1))
    if residual is not None and residual.shape[2:] != y.shape[2:]:
        residual = spread_borders_reference(residual, y.shape[2:])
    if residual is not None:
        y = y + residual.float()
    y = F.relu(y) if relu else y
    out = y.to(bias.dtype).contiguous(memory_format=torch.channels_last) if fp16_out else None
    if out_amax is None:
        return out, None
    scaled = F.pad(y.permute(0, 2, 3, 1), (0, 0, out_pad, out_pad, out_pad, out_pad)) * _inverse_scale(out_amax)
    return out, _saturated_e4m3(scaled).contiguous()


# (BM, BN, num_warps, num_stages, SWIZZLE): the fastest of `bench.kernel_variants --parts fp8conv`
# at R-50-D8's bottleneck and layer4 shapes on an H100
CONV_TILING = (128, 256, 8, 4, 8)


def conv_fp8(
    q: torch.Tensor, amax: torch.Tensor, weight_q: torch.Tensor, weight_scale: torch.Tensor,
    bias: torch.Tensor, kernel_size: int, pad: int, residual: torch.Tensor | None = None, relu: bool = True,
    out_amax: torch.Tensor | None = None, out_pad: int = 0, fp16_out: bool = True,
    tiling: tuple[int, int, int, int, int] = CONV_TILING, promote_every: int | None = None,
    pointwise_tiling: tuple[int, int, int, int, int] | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """relu(conv(x) + bias (+ residual)), stride 1, for a ``kernel_size`` 3 (dilation = padding =
    ``pad``) or 1 conv, from x as e4m3 (`quantize_padded`, or another `conv_fp8`'s e4m3 output)
    padded by ``pad`` zero pixels and scaled by ``amax`` (N values, or one static bound).

    Returns (N x Cout x H x W fp16, channels-last, if ``fp16_out``; the result as e4m3 scaled
    by the static ``out_amax`` and padded by ``out_pad``, if that is given): a chain of FP8 convs
    passes its activations on in e4m3, with no amax or quantize pass between them. A 1 x 1 conv
    on a padded map reads the centre tap only. A residual smaller than the output (at most 3 x 3)
    is spread over it as by `model.accel.kernels.spread_borders`, without that full-size map
    ever being written.

    ``tiling`` is the implicit-GEMM kernel's, ``pointwise_tiling`` the persistent 1 x 1 GEMM's
    (default `POINTWISE_TILING`). ``promote_every`` (the implicit-GEMM kernel only): None lets the
    tensor cores accumulate the whole K (Triton's default on sm90; their FP8 accumulator keeps
    fewer bits than fp32); 128 adds into a true fp32 accumulator every 128 products: more exact,
    but slower (both measured in bench/RESULTS.md)."""
    if not on_kernel_device(q):
        return conv_fp8_reference(
            q, amax, weight_q, weight_scale, bias, kernel_size, pad, residual, relu, out_amax, out_pad, fp16_out
        )  # fmt: skip
    from triton.tools.tensor_descriptor import TensorDescriptor

    n, hp, wp, c = q.shape
    h, w = hp - 2 * pad, wp - 2 * pad
    cout = weight_q.shape[0]
    out = q_out = None
    if fp16_out:
        out = torch.empty((n, cout, h, w), dtype=torch.float16, device=q.device, memory_format=torch.channels_last)
    if out_amax is not None:
        shape = (n, h + 2 * out_pad, w + 2 * out_pad, cout)
        q_out = (torch.zeros if out_pad else torch.empty)(shape, dtype=torch.float8_e4m3fn, device=q.device)
    if residual is not None:
        residual = residual.contiguous(memory_format=torch.channels_last)
    spread = residual is not None and residual.shape[2:] != (h, w)
    if kernel_size == 1 and pad == 0 and out_pad == 0 and not spread:
        _pointwise_fp8(q, amax, weight_q, weight_scale, bias, residual, relu, out, q_out, out_amax, pointwise_tiling)
        return out, q_out
    bm, bn, warps, stages, swizzle = tiling
    p = n * hp * wp
    a_desc = TensorDescriptor.from_tensor(q.view(p, c), [bm, K_STEP])
    b_desc = TensorDescriptor.from_tensor(weight_q, [bn, K_STEP])
    grid = (triton.cdiv(p, bm) * triton.cdiv(cout, bn),)
    _conv_fp8_kernel[grid](
        a_desc, amax, _stride(amax), b_desc, weight_scale, bias, q if residual is None else residual, out, q_out,
        amax if out_amax is None else out_amax, p, h, w, c, cout, hp, wp, pad, out_pad,
        FIRST_TAP=0 if kernel_size == 3 else 4, TAPS=kernel_size * kernel_size,
        RESIDUAL=0 if residual is None else 2 if spread else 1, RELU=relu, OUT_FP16=fp16_out,
        OUT_FP8=out_amax is not None, PROMOTE_EVERY=promote_every,
        BM=bm, BN=bn, BK=K_STEP, SWIZZLE=swizzle, num_warps=warps, num_stages=stages,
    )  # fmt: skip
    return out, q_out


# (BM, BN, num_warps, num_stages, SWIZZLE) of `_pointwise_fp8_kernel`: 4 stages do not fit shared memory
# beside the epilogue's TMA buffers
POINTWISE_TILING = (128, 256, 8, 3, 8)


def _pointwise_fp8(q, amax, weight_q, weight_scale, bias, residual, relu, out, q_out, out_amax, tiling) -> None:
    """`conv_fp8` of a 1 x 1 conv on an unpadded map with unpadded results: a persistent GEMM."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    n, h, w, c = q.shape
    cout, p = weight_q.shape[0], n * h * w
    bm, bn, warps, stages, swizzle = tiling or POINTWISE_TILING
    rows = lambda t: TensorDescriptor.from_tensor(t, [bm, bn // 2])  # noqa: E731 (channels-last: P x Cout)
    out_desc = rows(out.permute(0, 2, 3, 1).reshape(p, cout)) if out is not None else None
    q_desc = rows(q_out.view(p, cout)) if q_out is not None else None
    res_desc = rows(residual.permute(0, 2, 3, 1).reshape(p, cout)) if residual is not None else None
    any_desc = out_desc or q_desc
    sms = torch.cuda.get_device_properties(q.device).multi_processor_count if q.is_cuda else 4
    tiles = triton.cdiv(p, bm) * triton.cdiv(cout, bn)
    _pointwise_fp8_kernel[(min(sms, tiles),)](
        TensorDescriptor.from_tensor(q.view(p, c), [bm, K_STEP]), amax, _stride(amax),
        TensorDescriptor.from_tensor(weight_q, [bn, K_STEP]), weight_scale, bias, res_desc or any_desc,
        out_desc or any_desc, q_desc or any_desc, amax if out_amax is None else out_amax, p, h * w, c, cout,
        NUM_SMS=min(sms, tiles), RESIDUAL=residual is not None, RELU=relu, OUT_FP16=out is not None,
        OUT_FP8=q_out is not None, BM=bm, BN=bn, BK=K_STEP, SWIZZLE=swizzle, num_warps=warps, num_stages=stages,
    )  # fmt: skip
