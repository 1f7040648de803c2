"""What FP8 in layer4 adds to FP8 in the ASPP's bottleneck, alternated on one GPU (model only).

    python -m bench.ab_fp8_layer4 [--config R-50-D8] [--batch 8] [--reps 3] [--out FILE]

Three variants of one network (bench.perf's seeded realistic weights, 1024x2048, CUDA graphs of
`whole_image_labels`): fp16; "fp8-bottleneck", the ASPP's bottleneck in e4m3 only (what `use_fp8`
did before its `stage_channels`); "fp8-layer4", `use_fp8` as the service runs it. Timed in turn
``--reps`` times, so that machine drift hits all three alike; then layer4 alone, fp16 against FP8,
and each variant's label agreement with fp16 and fp32 on one seeded input (random weights: a
check that the kernels compute the same function, not an accuracy figure). Prints a table,
writes JSON (default bench/results/ab_fp8_layer4_<gpu>.json).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

from bench.backbones import CONFIGS
from bench.perf import network_input, realistic_weights, seeded_randn, time_forward
from model import build_model, get_config
from model.accel.cuda_graphs import ShapeGraphs
from model.accel.fast import optimize_for_inference, use_fp8, whole_image_labels

H, W = 1024, 2048


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="R-50-D8", choices=sorted(CONFIGS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    net = build_model(get_config(CONFIGS[args.config]), with_auxiliary=False).cuda()
    realistic_weights(net)
    rows = []
    with torch.inference_mode():
        fast = optimize_for_inference(net).half().to(memory_format=torch.channels_last)
        variants = {
            "fp16": fast,
            "fp8-bottleneck": use_fp8(copy.deepcopy(fast), stage_channels=sys.maxsize),
            "fp8-layer4": use_fp8(copy.deepcopy(fast)),
        }
        x1 = seeded_randn(1, 3, H, W, seed=2)
        reference = net(x1).argmax(1)
        labels = {name: whole_image_labels(v, network_input(x1, v)) for name, v in variants.items()}
        agreement = {
            name: {"with_fp16": round((lab == labels["fp16"]).float().mean().item(), 5),
                   "with_fp32": round((lab == reference).float().mean().item(), 5)}
            for name, lab in labels.items()
        }  # fmt: skip
        xb = network_input(seeded_randn(args.batch, 3, H, W, seed=4), fast)
        replays = {}
        for name, variant in variants.items():
            graphs = ShapeGraphs(functools.partial(whole_image_labels, variant), xb.device)
            graphs.capture(tuple(xb.shape), xb.dtype)
            replays[name] = graphs.graph(tuple(xb.shape)).replay
        for rep in range(args.reps):
            for name, replay in replays.items():
                p50 = statistics.median(time_forward(lambda _: replay(), xb, args.iters))  # noqa: B023
                rows.append({"rep": rep, "variant": name, "batch": args.batch, "p50_ms": round(p50, 3),
                             "img_per_s": round(args.batch * 1000 / p50, 1)})  # fmt: skip
        del replays
        x3 = torch.randn(args.batch, 1024, H // 8, W // 8, device="cuda").relu().half()
        x3 = x3.contiguous(memory_format=torch.channels_last)
        for name in ("fp16", "fp8-layer4"):
            p50 = statistics.median(time_forward(variants[name].backbone.stages[3], x3, args.iters))
            rows.append({"part": "layer4", "variant": name, "batch": args.batch, "p50_ms": round(p50, 3)})
    for r in rows:
        print(f"{r.get('part', 'network'):<8} rep {r.get('rep', '-')!s:<2} {r['variant']:<15} {r['p50_ms']:>8.3f} ms"
              + (f" {r['img_per_s']:>7.1f} img/s" if "img_per_s" in r else ""))  # fmt: skip
    for name, agree in agreement.items():
        print(f"labels {name:<15} agree with fp16 {agree['with_fp16']:.5f}, with fp32 {agree['with_fp32']:.5f}")
    gpu = torch.cuda.get_device_name()
    out = args.out or Path(__file__).parent / "results" / f"ab_fp8_layer4_{gpu.replace(' ', '_')}.json"
    meta = {"gpu": gpu, "torch": torch.__version__, "date": datetime.date.today().isoformat(),
            "command": "python -m bench.ab_fp8_layer4 " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    out.write_text(json.dumps({**meta, "config": args.config, "agreement": agreement, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
