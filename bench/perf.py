"""Model-only GPU throughput of DeepLabV3+ variants at 1024x2048, before and after our rewrites.

    python -m bench.perf [--configs R-50-D8 ...] [--batches 1 4 8 16] [--profile R-50-D8]

For each backbone: eager fp32 at batch 1 with TF32 off (the reference), then the optimized network (`model.accel.fast`) in fp16
channels_last at each batch, launched eagerly and replayed as a CUDA graph, from its normalised
input (fp16, 8 channels: the image's 3, then zeros) to uint8 labels; then the graph the service
replays, from uint8 pixels (the normalisation kernel included). On Hopper GPUs the same two graphs
again with the ASPP's bottleneck and layer4 in FP8 (precision "fp8", `model.accel.fast.use_fp8`, as
`--precision fp8` serves).

Label agreement: only `--agreement-images` measures accuracy cost (the trained built-in model on
real photos, fp16, FP8-bottleneck and FP8-bottleneck-and-layer4 labels against fp32). The zoo configs have no trained weights
here, so their rows carry `kernel_consistency` instead: the fraction of labels that match fp32 for
seeded random weights and a seeded random input, a check that the kernels compute the same
function, not an accuracy figure. Prints a table, writes one JSON object per measurement to
bench/results/perf_<gpu>.json; `--profile R-50-D8` prints the top CUDA kernels of that backbone at
batch 1 before and after. Last, the GPU's dense fp16 matmul peak (`peak` in the JSON: the
denominator of RESULTS.md's FLOP-ceiling column, measured in the same run as the model).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from bench.backbones import CONFIGS
from model import build_model, get_config
from model.accel import fp8
from model.accel.fast import Fp8Conv3x3, optimize_for_inference, use_fp8, whole_image_labels
from model.accel.kernels import depthwise3x3_reference, depthwise3x3_relu, upsample_argmax, upsample_argmax_reference
from model.accel.fast import normalizer
from model.accel.cuda_graphs import ShapeGraphs

H, W = 1024, 2048


def realistic_weights(net: torch.nn.Module) -> None:
    """Seeded random weights whose BN statistics are those of the activations they see (as after
    training), so activations stay unit-scale for the kernel-consistency check; random running
    statistics instead grow the logits ~1e4-fold through the residual stages."""
    g = torch.Generator().manual_seed(0)
    for name, t in net.state_dict().items():
        if t.is_floating_point() and t.dim() > 1:
            t.copy_(torch.randn(t.shape, generator=g) * (2.0 / t[0].numel()) ** 0.5)
        elif name.endswith(".bias") and t.is_floating_point():
            t.copy_(torch.randn(t.shape, generator=g) * 0.1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    net.train()
    with torch.no_grad():
        net(torch.randn(2, 3, 512, 1024, generator=g).to(next(net.parameters()).device))
    net.eval()


def network_input(x: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """Normalised float N x 3 x H x W -> what ``net`` takes: fp16 channels-last, zero channels up
    to ``net.input_channels`` (as the service's normalizer writes them)."""
    x = torch.nn.functional.pad(x, (0, 0, 0, 0, 0, net.input_channels - x.shape[1]))
    return x.half().contiguous(memory_format=torch.channels_last)


def pixels_to_labels(net: torch.nn.Module, normalize):
    """What the service's CUDA graph runs: uint8 N x H x W x 3 -> normalised input -> labels."""
    return lambda pixels: whole_image_labels(net, normalize(pixels))


def eager_labels(net):
    return lambda x: net(x).argmax(1).to(torch.uint8)


def seeded_randn(*shape: int, seed: int) -> torch.Tensor:
    """A reproducible random input on the GPU, so kernel-consistency figures repeat run to run."""
    return torch.randn(*shape, generator=torch.Generator(device="cuda").manual_seed(seed), device="cuda")


def dense_fp16_peak(sizes: tuple[int, ...] = (4096, 8192, 16384), iters: int = 10) -> dict:
    """The best dense fp16 matmul rate of this GPU (square torch.matmul, CUDA events), so the
    FLOP-ceiling fraction divides by a rate measured on the same machine as the model."""
    by_size = {}
    for n in sizes:
        a, b = (seeded_randn(n, n, seed=s).half() for s in (0, 1))
        best_ms = min(time_forward(functools.partial(torch.matmul, other=b), a, iters))
        by_size[str(n)] = round(2 * n**3 / best_ms / 1e9, 1)
        del a, b
    print("dense fp16 matmul TFLOP/s by size", by_size, flush=True)
    return {"dense_fp16_tflops": max(by_size.values()), "matmul_tflops_by_size": by_size}


def check_kernel() -> list[dict]:
    """Fused upsample + argmax against F.interpolate + argmax on random logits."""
    rows = []
    for n, c, h, w, ac in [(2, 19, 256, 512, False), (1, 150, 128, 128, False), (3, 19, 193, 193, True), (1, 7, 37, 51, False)]:
        logits = torch.randn(n, c, h, w, device="cuda", dtype=torch.float16)
        for layout in ("nchw", "nhwc"):
            x = logits if layout == "nchw" else logits.contiguous(memory_format=torch.channels_last)
            got = upsample_argmax(x, (h * 4 + 1, w * 4 - 3), ac)
            ref = upsample_argmax_reference(x, (h * 4 + 1, w * 4 - 3), ac)
            rows.append({"shape": [n, c, h, w], "align_corners": ac, "layout": layout,
                         "agreement": (got == ref).float().mean().item()})  # fmt: skip
            print("kernel check", rows[-1], flush=True)
    half = {"device": "cuda", "dtype": torch.float16}
    x = torch.randn(2, 2048, 128, 256, **half).contiguous(memory_format=torch.channels_last)  # the ASPP's input
    w, b = torch.randn(2048, 1, 3, 3, **half), torch.randn(2048, **half)
    for d in (1, 12, 36):
        got, ref = depthwise3x3_relu(x, w, b, d).float(), depthwise3x3_reference(x.float(), w.float(), b.float(), d)
        ours = time_forward(functools.partial(depthwise3x3_relu, weight=w, bias=b, dilation=d), x, 20)
        cudnn = time_forward(functools.partial(depthwise3x3_reference, weight=w, bias=b, dilation=d), x, 20)
        rows.append({"kernel": "depthwise3x3_relu", "dilation": d, "max_abs_err": (got - ref).abs().max().item(),
                     "ms_per_image": round(statistics.median(ours) / 2, 3),
                     "cudnn_ms_per_image": round(statistics.median(cudnn) / 2, 3)})  # fmt: skip
        print("kernel check", rows[-1], flush=True)
    return rows


def time_forward(fn, x: torch.Tensor, iters: int) -> list[float]:
    """Per-iteration milliseconds from CUDA events, after warm-up."""
    for _ in range(3):
        fn(x)
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return times


def profile(fn, x: torch.Tensor, title: str, top: int = 15) -> None:
    """Top GPU kernels, then the PyTorch ops (with input shapes) that launched them."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fn(x)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
        fn(x)
        torch.cuda.synchronize()
    print(f"\n== profile: {title}")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=top, max_name_column_width=90))
    print(prof.key_averages(group_by_input_shape=True).table(
        sort_by="device_time_total", row_limit=top, max_name_column_width=40, max_shapes_column_width=90))  # fmt: skip


@contextlib.contextmanager
def strict_fp32():
    """The reference labels: true fp32 convolutions and matmuls, no TF32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def trained_agreement(image_dir: Path, count: int = 8) -> dict:
    """fp16 optimized vs fp32 labels of the shipped CamVid model (trained weights, so few pixels
    sit on near-ties as they do with random weights) on real photos resized to 1024x2048."""
    from PIL import Image

    from model import DEFAULT_MODEL, load_model
    from model.pipeline.normalize import normalize

    net = load_model(DEFAULT_MODEL, device="cuda")
    fast = optimize_for_inference(net).half().to(memory_format=torch.channels_last)
    variants = {"agreement": fast}
    if fp8.supported("cuda"):  # its bottleneck (512 -> 128) and layer4 (512) are below use_fp8's thresholds
        variants["agreement_fp8_bottleneck"] = use_fp8(copy.deepcopy(fast), min_channels=128)
        variants["agreement_fp8_layer4"] = use_fp8(copy.deepcopy(fast), min_channels=128, stage_channels=512)
    paths = sorted([*image_dir.glob("*.jpg"), *image_dir.glob("*.png")])[:count]
    same, total = dict.fromkeys(variants, 0), 0
    with torch.inference_mode():
        for path in paths:
            rgb = torch.from_numpy(np.asarray(Image.open(path).convert("RGB").resize((W, H), Image.BILINEAR)))
            x = normalize(rgb[None].cuda(), net.config)
            with strict_fp32():
                ref = net(x).argmax(1)
            for key, variant in variants.items():
                same[key] += (whole_image_labels(variant, network_input(x, variant)) == ref).sum().item()
            total += ref.numel()
    agreements = {key: round(n / total, 5) for key, n in same.items()}
    return {"model": DEFAULT_MODEL, "images": len(paths), "input": f"{H}x{W}", **agreements}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--configs", nargs="+", default=list(CONFIGS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 4, 8, 16])
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--profile", nargs="*", default=[], help="backbones to profile at batch 1 and 8 (eager fp16, optimized fp16 and fp8)")
    p.add_argument("--agreement-images", type=Path, help="photos for the trained-model agreement (the only accuracy check)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    gpu = torch.cuda.get_device_name()
    common = {"input": f"{H}x{W}", "mode": "model", "gpu": gpu, "torch": torch.__version__,
              "date": datetime.date.today().isoformat(), "command": "python -m bench.perf " + " ".join(sys.argv[1:])}  # fmt: skip
    rows: list[dict] = []
    kernel_rows: list[dict] = []
    out = Path(args.out or Path(__file__).parent / "results" / f"perf_{gpu.replace(' ', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    trained: dict = {}
    peak: dict = {}

    def write():
        out.write_text(json.dumps({"peak": peak, "measurements": rows, "kernel_checks": kernel_rows,
                                   "trained_model_agreement": trained}, indent=1))  # fmt: skip

    kernel_rows.extend(check_kernel())
    if args.agreement_images:
        trained.update(trained_agreement(args.agreement_images))
        print("trained model agreement", trained, flush=True)

    def record(label, backend, precision, batch, times, **extra):
        med = statistics.median(times)
        row = {"config": CONFIGS[label], "arch": label, "backend": backend, "precision": precision, "batch": batch,
               "img_per_s": round(batch * 1000 / med, 1), "p50_ms": round(med, 2),
               "p99_ms": round(sorted(times)[min(len(times) - 1, int(0.99 * len(times)))], 2), **extra, **common}  # fmt: skip
        rows.append(row)
        write()  # after every row, so a later failure keeps what was measured
        print(f"{label:<16} {backend:<22} {precision:<5} b={batch:<3} {row['img_per_s']:>8} img/s  p50 {row['p50_ms']:>8} ms"
              + "".join(f"  {k}={v}" for k, v in extra.items()), flush=True)  # fmt: skip

    for label in args.configs:
        net = build_model(get_config(CONFIGS[label]), with_auxiliary=False).cuda()
        realistic_weights(net)
        x1 = seeded_randn(1, 3, H, W, seed=2)
        with torch.inference_mode():
            with strict_fp32():
                ref_logits = net(x1)
                ref_labels = ref_logits.argmax(1)
                record(label, "torch-eager", "fp32", 1, time_forward(eager_labels(net), x1, args.iters),
                       tf32=False, logit_absmax=round(ref_logits.abs().max().item(), 1))  # fmt: skip
            eager16 = copy.deepcopy(net).half().to(memory_format=torch.channels_last)
            x1h = x1.half().contiguous(memory_format=torch.channels_last)
            agree16 = (eager_labels(eager16)(x1h) == ref_labels).float().mean().item()
            fast = optimize_for_inference(net).half().to(memory_format=torch.channels_last)
            fast_labels = functools.partial(whole_image_labels, fast)
            x8 = seeded_randn(8, 3, H, W, seed=3).half().contiguous(memory_format=torch.channels_last)
            if label in args.profile:
                for x in (x1h, x8):
                    profile(eager_labels(eager16), x, f"{label} eager fp16 channels_last, batch {len(x)}")
            record(label, "torch-eager", "fp16", 8, time_forward(eager_labels(eager16), x8, args.iters),
                   kernel_consistency=round(agree16, 5))  # fmt: skip
            del eager16, x8
            agree = (fast_labels(network_input(x1, fast)) == ref_labels).float().mean().item()
            normalize = normalizer(net.config, "cuda", torch.float16, fast.input_channels)
            graphed = [("fp16", fast, {})]
            quantized = use_fp8(copy.deepcopy(fast)) if fp8.supported("cuda") else fast
            if isinstance(quantized.decode_head.bottleneck, Fp8Conv3x3):
                labels8 = whole_image_labels(quantized, network_input(x1, quantized))
                graphed.append(("fp8", quantized, {
                    "kernel_consistency": round((labels8 == ref_labels).float().mean().item(), 5),
                    "kernel_consistency_with_fp16": round((labels8 == fast_labels(network_input(x1, fast))).float().mean().item(), 5),
                }))  # fmt: skip
            if label in args.profile:
                for precision, variant, _ in graphed:
                    for b in (1, 8):
                        xp = network_input(seeded_randn(b, 3, H, W, seed=3), variant)
                        profile(functools.partial(whole_image_labels, variant), xp,
                                f"{label} optimized {precision} channels_last, batch {b}")  # fmt: skip
            for b in args.batches:
                xb = network_input(seeded_randn(b, 3, H, W, seed=4), fast)
                record(label, "torch-optimized", "fp16", b, time_forward(fast_labels, xb, args.iters),
                       kernel_consistency=round(agree, 5))  # fmt: skip
                pixels = torch.randint(0, 256, (b, H, W, 3), dtype=torch.uint8, device="cuda")
                for precision, variant, extra in graphed:
                    for backend, fn, inp in [("torch-optimized-graph", functools.partial(whole_image_labels, variant), xb),
                                             ("torch-service-graph", pixels_to_labels(variant, normalize), pixels)]:  # fmt: skip
                        graphs = ShapeGraphs(fn, inp.device)
                        graphs.capture(tuple(inp.shape), inp.dtype)
                        replay = graphs.graph(tuple(inp.shape)).replay
                        record(label, backend, precision, b, time_forward(lambda _: replay(), inp, args.iters), **extra)  # noqa: B023
                        del graphs
        del net, fast, fast_labels, quantized, graphed
        torch.cuda.empty_cache()
    # last, so the large matmuls cannot disturb the model's timings: with them first, the R-50
    # graphs measured 3-7% below a same-code A/B run (bench/results/relayer_perf_after_*_h200.json)
    peak.update(dense_fp16_peak())
    write()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
