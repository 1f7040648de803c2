"""Candidate versions of the inference kernels at R-50-D8's shapes (1024x2048 input), timed in one run.

    python -m bench.kernel_variants [--batch 8] [--parts head maxpool aspp1x1 depthwise fp8conv fp8block] [--out FILE]

- depthwise 3x3 + bias + ReLU (the separable convs' first half): our Triton kernel over a grid of
  tilings, against cuDNN (`F.conv2d` + ReLU, and `cudnn_convolution_relu`), at the ASPP's shapes
  (2048 channels at 1/8 resolution, dilation 12/24/36) and the decoder's (560 and 512 channels at
  1/4 resolution, dilation 1), beside a copy of the same bytes (`x.clone()`: the bandwidth ceiling);
- the stem's 3x3 / stride 2 max pool: PyTorch (writes int64 indices too) against `max_pool3x3s2`;
- the ASPP's four 1x1 convs (2048 -> 512, + bias + ReLU) and their concat: four cuDNN calls +
  `torch.cat`, against four GEMMs with a bias + ReLU epilogue written straight into column slices
  of the concat buffer (`torch._addmm_activation(out=...)`);
- the head's passes: the ASPP's concat (`torch.cat` against `concat_channels`), the decoder's
  resize + concat at several tilings, and the final upsample + argmax from channels-last logits
  against from a channels-first copy (error column: the fraction of labels that differ from the
  fp32 reference);
- the 3x3 convs `model.accel.fast.use_fp8` may take: cuDNN fp16 against `model.accel.fp8` (its amax and
  quantize passes timed apart, tilings, with and without fp32 promotion of the accumulator, and
  the accumulation error against an exact product), and cuBLAS's FP8 GEMM of the same size.
- layer4's convs as `use_fp8` runs them (`fp8block`): e4m3 in and out by static bounds, against
  cuDNN fp16, at several tilings, beside cuBLAS's FP8 GEMM of the same size.
Each row: ms per batch (median, CUDA events, L2 flushed between runs), the bandwidth of its
compulsory bytes (each input read once, each output written once), max |error| against the
reference. Tables are printed; all rows go to the JSON file.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from model.accel import fp8, kernels

TILINGS = [  # (BLOCK_X, BLOCK_C, ROWS, num_warps); shipped in turn: the first, 64x64x2x4, 32x64x11x4
    (64, 64, 8, 8), (64, 64, 4, 8), (64, 64, 2, 8), (64, 64, 2, 4), (64, 64, 1, 4), (32, 64, 8, 4),
    (32, 64, 4, 4), (32, 64, 2, 4), (32, 64, 1, 2), (64, 32, 8, 4), (128, 32, 4, 8), (32, 128, 4, 8),
    (16, 128, 4, 4), (128, 64, 2, 8), (32, 32, 4, 2), (64, 128, 2, 8),
    # one row group per residue at 1024x2048's H = 128: ROWS = ceil(128 / dilation) = 11, 6, 4
    (64, 64, 11, 4), (32, 64, 11, 4), (64, 64, 6, 4), (32, 64, 6, 4), (64, 32, 11, 4), (32, 128, 6, 8),
    (64, 64, 16, 8), (16, 64, 11, 2), (32, 128, 11, 8),
]  # fmt: skip


def bench_ms(fn) -> float:
    import triton.testing

    return triton.testing.do_bench(fn, warmup=25, rep=150, return_mode="median")


def row(table: list, kind: str, shape: str, variant: str, ms: float, nbytes: int, err: float, flop: int = 0) -> None:
    """Memory-bound rows carry `gb_per_s`; rows given ``flop`` carry `tflop_per_s` instead (the
    committed kernel_variants_*_h100.json files predate this and store the conv rows' TFLOP/s under
    `gb_per_s`)."""
    rate = {"tflop_per_s": round(flop / ms / 1e9, 1)} if flop else {"gb_per_s": round(nbytes / ms / 1e6, 1)}
    table.append({"kernel": kind, "shape": shape, "variant": variant, "ms": round(ms, 4), **rate, "max_abs_err": err})
    print(f"{kind:<10} {shape:<28} {variant:<34} {ms:8.3f} ms {rate_text(table[-1]):>14}  err {err:.3g}", flush=True)


def rate_text(r: dict) -> str:
    return f"{r['tflop_per_s']} TFLOP/s" if "tflop_per_s" in r else f"{r['gb_per_s']} GB/s"


def depthwise(batch: int, table: list) -> None:
    half = {"device": "cuda", "dtype": torch.float16}
    for c, h, w, d in [(2048, 128, 256, 12), (2048, 128, 256, 24), (2048, 128, 256, 36), (560, 256, 512, 1), (512, 256, 512, 1)]:
        x = torch.randn(batch, c, h, w, **half).contiguous(memory_format=torch.channels_last)
        weight, bias = torch.randn(c, 1, 3, 3, **half) / 3, torch.randn(c, **half)
        ref = kernels.depthwise3x3_reference(x.float(), weight.float(), bias.float(), d)
        shape, nbytes = f"{batch}x{c}x{h}x{w} d{d}", 2 * x.numel() * 2
        args = ((1, 1), (d, d), (d, d), c)
        candidates = {
            "cudnn conv2d+relu": lambda: kernels.depthwise3x3_reference(x, weight, bias, d),
            "cudnn_convolution_relu": lambda: torch.cudnn_convolution_relu(x, weight, bias, *args),
            "copy (x.clone(), the bandwidth ceiling)": lambda: x.clone(),
        }
        for t in TILINGS:
            candidates["triton " + "x".join(map(str, t))] = lambda t=t: kernels.depthwise3x3_relu(x, weight, bias, d, t)
        for name, fn in candidates.items():
            err = (fn().float() - (x.float() if name.startswith("copy") else ref)).abs().max().item()
            row(table, "depthwise", shape, name, bench_ms(fn), nbytes, err)


def max_pool(batch: int, table: list) -> None:
    x = torch.randn(batch, 64, 512, 1024, device="cuda", dtype=torch.float16).contiguous(memory_format=torch.channels_last)
    ref = F.max_pool2d(x, 3, 2, 1)
    nbytes = (x.numel() + ref.numel()) * 2
    for name, fn in {"F.max_pool2d": lambda: F.max_pool2d(x, 3, 2, 1), "triton max_pool3x3s2": lambda: kernels.max_pool3x3s2(x)}.items():
        row(table, "maxpool", f"{batch}x64x512x1024", name, bench_ms(fn), nbytes, (fn() - ref).abs().max().item())


def aspp_pointwise(batch: int, table: list) -> None:
    half = {"device": "cuda", "dtype": torch.float16}
    xs = [torch.randn(batch, 2048, 128, 256, **half).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    ws = [torch.randn(512, 2048, 1, 1, **half) / 45 for _ in range(4)]
    bs = [torch.randn(512, **half) for _ in range(4)]

    def cudnn_then_cat():
        return torch.cat([torch.cudnn_convolution_relu(x, w, b, (1, 1), (0, 0), (1, 1), 1) for x, w, b in zip(xs, ws, bs)], 1)

    def gemm_into_slices():
        out = torch.empty(batch, 2048, 128, 256, **half, memory_format=torch.channels_last)
        flat = out.permute(0, 2, 3, 1).reshape(-1, 2048)  # a view: channels-last is pixels x channels
        for i, (x, w, b) in enumerate(zip(xs, ws, bs)):
            torch._addmm_activation(b, x.permute(0, 2, 3, 1).reshape(-1, 2048), w.view(512, 2048).t(),
                                    out=flat[:, 512 * i : 512 * (i + 1)])  # fmt: skip
        return out

    def gemm_contiguous():  # the same GEMMs into their own buffers: what the slices may cost
        return [torch._addmm_activation(b, x.permute(0, 2, 3, 1).reshape(-1, 2048), w.view(512, 2048).t()) for x, w, b in zip(xs, ws, bs)]

    ref = cudnn_then_cat()
    nbytes = (4 * xs[0].numel() + ref.numel()) * 2
    for name, fn in {"4 cudnn 1x1 + cat": cudnn_then_cat, "4 addmm_activation into slices": gemm_into_slices,
                     "4 addmm_activation, own buffers": gemm_contiguous}.items():  # fmt: skip
        out = fn()
        err = (out - ref).abs().max().item() if isinstance(out, torch.Tensor) else float("nan")
        row(table, "aspp 1x1", f"4x {batch}x2048x128x256->512", name, bench_ms(fn), nbytes, err)


def head_passes(batch: int, table: list) -> None:
    half = {"device": "cuda", "dtype": torch.float16}
    maps = [torch.randn(batch, 512, 128, 256, **half).contiguous(memory_format=torch.channels_last) for _ in range(4)]
    ref = torch.cat(maps, 1)
    for name, fn in {"torch.cat": lambda: torch.cat(maps, 1), "concat_channels": lambda: kernels.concat_channels(maps)}.items():
        row(table, "concat", f"4x {batch}x512x128x256", name, bench_ms(fn), 2 * ref.numel() * 2, (fn() - ref).abs().max().item())
    low = torch.randn(batch, 512, 128, 256, **half).contiguous(memory_format=torch.channels_last)
    skip = torch.randn(batch, 48, 256, 512, **half).contiguous(memory_format=torch.channels_last)
    ref = kernels.resize_concat(low, skip, False)
    for tiling in [(32, 128, 4), (64, 64, 4), (64, 128, 8), (16, 256, 4), (32, 256, 8), (128, 32, 4), (32, 64, 2)]:
        fn = functools.partial(kernels.resize_concat, low, skip, False, tiling=tiling)
        row(table, "resize", f"{batch}x512x128x256->256x512 +48", f"resize_concat {tiling}", bench_ms(fn),
            (low.numel() + 2 * skip.numel() + ref.numel()) * 2, (fn() - ref).abs().max().item())  # fmt: skip
    logits = torch.randn(batch, 19, 256, 512, **half).contiguous(memory_format=torch.channels_last)
    size = (1024, 2048)
    labels = kernels.upsample_argmax_reference(logits, size, False)
    for name, fn in {
        "channels-last logits": lambda: kernels.upsample_argmax(logits, size, False),
        "contiguous() then kernel": lambda: kernels.upsample_argmax(logits.contiguous(), size, False),
    }.items():
        err = 1 - (fn() == labels).float().mean().item()
        row(table, "upsample", f"{batch}x19x256x512->1024x2048", name, bench_ms(fn), logits.numel() * 2 + labels.numel(), err)


FP8_TILINGS = [  # (BM, BN, num_warps, num_stages, SWIZZLE); model.accel.fp8.CONV_TILING is the shipped one
    (128, 256, 8, 3, 8), (128, 256, 8, 4, 8),
]  # fmt: skip


def fp8_convs(batch: int, table: list) -> None:
    """The ASPP bottleneck (what `model.accel.fast.use_fp8` takes) and layer4's 3x3 conv (which it leaves
    to cuDNN): cuDNN fp16 against `model.accel.fp8` (amax, quantize, FP8 conv, each timed) and cuBLAS's
    FP8 GEMM of the same size (`torch._scaled_mm`, the rate a good FP8 GEMM reaches)."""
    half = {"device": "cuda", "dtype": torch.float16}
    for name, branches, cout, d in [("layer4", 1, 512, 4), ("bottleneck", 4, 512, 1)]:
        c = 2048 // branches if branches > 1 else cout
        maps = [torch.relu(torch.randn(batch, c, 128, 256, **half)).contiguous(memory_format=torch.channels_last) for _ in range(branches)]
        x = torch.cat(maps, 1)
        weight, bias = torch.randn(cout, x.shape[1], 3, 3, **half) * (2 / (9 * x.shape[1])) ** 0.5, torch.randn(cout, **half) * 0.1
        ref = torch.relu(F.conv2d(x.float(), weight.float(), bias.float(), padding=d, dilation=d))
        shape = f"{name} {batch}x{x.shape[1]}x128x256->{cout} d{d}"
        flop = 2 * batch * 128 * 256 * 9 * x.shape[1] * cout

        def report(variant, fn, check=True):
            ms = bench_ms(fn)
            err = ((fn().float() - ref).abs().max() / ref.abs().max()).item() if check else float("nan")
            row(table, "conv3x3", shape, variant, ms, 0, err, flop=flop)

        report("cudnn fp16", lambda: torch.cudnn_convolution_relu(x, weight, bias, (1, 1), (d, d), (d, d), 1))
        amax = fp8.image_amax(maps)
        q = fp8.quantize_padded(maps, amax, d)
        row(table, "fp8 prep", shape, "image_amax", bench_ms(lambda: fp8.image_amax(maps)), x.numel() * 2, 0.0)
        qerr = (q.view(torch.uint8) != fp8.quantize_padded_reference(maps, amax, d).view(torch.uint8)).float().mean().item()
        row(table, "fp8 prep", shape, "quantize_padded", bench_ms(lambda: fp8.quantize_padded(maps, amax, d)), x.numel() * 3, qerr)
        wq, ws = fp8.quantize_weight(weight)
        torch.backends.cudnn.allow_tf32 = False
        exact, _ = fp8.conv_fp8_reference(q[:2], amax[:2], wq, ws, bias.float(), 3, d, None, True)  # of the first 2 images
        torch.backends.cudnn.allow_tf32 = True
        for tiling in FP8_TILINGS:
            for promote in (None, 128):
                conv = functools.partial(fp8.conv_fp8, q, amax, wq, ws, bias, 3, d, tiling=tiling, promote_every=promote)
                fn = lambda: conv()[0]  # noqa: B023,E731 (the fp16 result; called within this iteration)
                report(f"fp8 {tiling} promote {promote}", fn)
                got = fn()[:2].float()
                print(f"    accumulation error against the fp32 product of the same e4m3 values: max "
                      f"{(got - exact).abs().max().item() / exact.abs().max().item():.1e}, mean "
                      f"{(got - exact).mean().item() / exact.abs().mean().item():+.1e} (relative to |max|, |mean|)", flush=True)
        gemm_m = batch * (128 + 2 * d) * (256 + 2 * d)
        a = torch.randn(gemm_m, 9 * x.shape[1], **half).to(torch.float8_e4m3fn)
        b = torch.randn(cout, 9 * x.shape[1], **half).to(torch.float8_e4m3fn).t()
        one = torch.ones((), device="cuda")
        report("cublas fp8 _scaled_mm, same GEMM", lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.float16), check=False)


FP8_BLOCK_TILINGS = [  # (BM, BN, num_warps, num_stages, SWIZZLE) for the layer4 convs in FP8; fp8.CONV_TILING
    # and fp8.POINTWISE_TILING are the shipped ones (the persistent 1x1 kernel's and the other's)
    (128, 256, 8, 4, 8), (128, 256, 8, 3, 8), (256, 128, 8, 3, 8), (128, 128, 8, 4, 8), (128, 128, 4, 4, 8),
    (64, 256, 4, 4, 8), (128, 128, 4, 3, 16), (128, 256, 8, 2, 8),
]  # fmt: skip


def fp8_block_convs(batch: int, table: list) -> None:
    """R-50-D8's layer4 convs as `model.accel.fast.use_fp8` runs them in an `Fp8Stage` (e4m3 in,
    e4m3 and/or fp16 out by static bounds, no amax or quantize pass) against cuDNN fp16 as
    `FusedConv` runs them, at several tilings (of the persistent GEMM for the 1x1 convs with
    unpadded results, of the implicit-GEMM kernel for the rest), with cuBLAS's FP8 GEMM of the
    same size beside."""
    from triton.runtime.errors import OutOfResources

    half = {"device": "cuda", "dtype": torch.float16}
    h, w = 128, 256
    one = torch.ones((), device="cuda")
    for name, cin, cout, k, pad, out_pad, residual, fp16_out in [
        ("conv1 1x1 -> padded e4m3", 2048, 512, 1, 0, 4, False, False),
        ("conv2 3x3 d4 -> e4m3", 512, 512, 3, 4, 0, False, False),
        ("conv3 1x1 + residual -> fp16 + e4m3", 512, 2048, 1, 0, 0, True, True),
        ("downsample 1x1 -> fp16", 1024, 2048, 1, 0, None, False, True),
    ]:  # fmt: skip
        x = torch.relu(torch.randn(batch, cin, h, w, **half)).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(cout, cin, k, k, **half) * (2 / (k * k * cin)) ** 0.5
        bias = torch.randn(cout, **half) * 0.1
        res = torch.randn(batch, cout, h, w, **half).contiguous(memory_format=torch.channels_last) if residual else None
        shape = f"layer4 {name} {batch}x{cin}x{h}x{w}->{cout}"
        flop = 2 * batch * h * w * k * k * cin * cout
        args = ((1, 1), (pad, pad), (max(pad, 1),) * 2, 1)
        if residual:
            cudnn = lambda: torch.cudnn_convolution_add_relu(x, weight, res, 1.0, bias, *args)  # noqa: E731
        else:
            cudnn = lambda: torch.cudnn_convolution_relu(x, weight, bias, *args)  # noqa: E731
        row(table, "fp8 block", shape, "cudnn fp16", bench_ms(cudnn), 0, 0.0, flop=flop)
        amax = x.float().abs().amax().reshape(1)
        q = fp8.quantize_padded([x], amax, pad)
        wq, ws = fp8.quantize_weight(weight)
        out_amax = None if out_pad is None else amax
        ref = cudnn().float()
        for tiling in FP8_BLOCK_TILINGS:
            fn = functools.partial(
                fp8.conv_fp8, q, amax, wq, ws, bias, k, pad, res, True, out_amax, out_pad or 0, fp16_out,
                tiling=tiling, pointwise_tiling=tiling,
            )  # fmt: skip
            try:
                ms = bench_ms(fn)
            except OutOfResources as e:  # a tiling that does not fit shared memory
                print(f"  {shape} {tiling}: {type(e).__name__}", flush=True)
                continue
            out, _ = fn()
            err = float("nan") if out is None else ((out.float() - ref).abs().max() / ref.abs().max()).item()
            row(table, "fp8 block", shape, f"fp8 {tiling}", ms, 0, err, flop=flop)
        a = torch.randn(batch * (h + 2 * pad) * (w + 2 * pad), k * k * cin, **half).to(torch.float8_e4m3fn)
        b = torch.randn(cout, k * k * cin, **half).to(torch.float8_e4m3fn).t()
        row(table, "fp8 block", shape, "cublas fp8 _scaled_mm, same GEMM",
            bench_ms(lambda: torch._scaled_mm(a, b, one, one, out_dtype=torch.float16)), 0, float("nan"), flop=flop)  # noqa: B023
        for r in table[-len(FP8_BLOCK_TILINGS) - 2 :]:
            print(f"  {r['shape']:<60} {r['variant']:<36} {r['ms']:.4f} ms {r.get('tflop_per_s')} TFLOP/s", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--out", type=Path)
    parts = {"head": head_passes, "maxpool": max_pool, "aspp1x1": aspp_pointwise, "depthwise": depthwise, "fp8conv": fp8_convs, "fp8block": fp8_block_convs}
    p.add_argument("--parts", nargs="+", choices=list(parts), default=list(parts))
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name()
    table: list[dict] = []
    for name in args.parts:
        parts[name](args.batch, table)
    best = {}
    for r in table:
        key = (r["kernel"], r["shape"])
        if key not in best or r["ms"] < best[key]["ms"]:
            best[key] = r
    print("\nbest per shape:")
    for (kind, shape), r in best.items():
        print(f"  {kind:<10} {shape:<28} {r['variant']:<34} {r['ms']:.3f} ms  {rate_text(r)}")
    out = args.out or Path(__file__).parent / "results" / f"kernel_variants_{gpu.replace(' ', '_')}.json"
    meta = {"gpu": gpu, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "command": "python -m bench.kernel_variants " + " ".join(sys.argv[1:])}  # fmt: skip
    out.write_text(json.dumps({**meta, "rows": table}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
