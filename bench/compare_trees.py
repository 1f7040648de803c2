"""Same-run A/B of the optimized network between source trees (e.g. before and after a refactor).

    python -m bench.compare_trees TREE_A TREE_B [--config R-50-D8] [--batch 8] [--rounds 2]

Each round times every tree in its own subprocess, alternating A, B, A, B, so drift of the GPU
(clocks, temperature) spreads over both; each subprocess builds the config with the same seeded
weights (`bench.perf.realistic_weights`) and times the CUDA graph the service replays (uint8
pixels to labels) in fp16 and, on Hopper, with the FP8 bottleneck. A tree is a checkout with
`model/` and `bench/` at its root; trees older than the re-layering (model.fast, model.preprocess,
service.backends.cuda_graphs) are accepted. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, torch
try:
    from model.accel import fp8
    from model.accel.cuda_graphs import ShapeGraphs
    from model.accel.fast import normalizer, optimize_for_inference, use_fp8
except ImportError:  # a tree from before the re-layering
    from model import fp8
    from model.fast import optimize_for_inference, use_fp8
    from model.preprocess import normalizer
    from service.backends.cuda_graphs import ShapeGraphs
from bench.perf import CONFIGS, H, W, pixels_to_labels, realistic_weights, time_forward
from model import build_model, get_config

label, batch, iters = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.backends.cudnn.benchmark = True
net = build_model(get_config(CONFIGS[label]), with_auxiliary=False).cuda()
realistic_weights(net)
fast = optimize_for_inference(net).half().to(memory_format=torch.channels_last)
variants = {"fp16": fast}
if fp8.supported("cuda"):
    variants["fp8"] = use_fp8(optimize_for_inference(net).half().to(memory_format=torch.channels_last))
pixels = torch.randint(0, 256, (batch, H, W, 3), dtype=torch.uint8, device="cuda")
out = {}
with torch.inference_mode():
    for precision, variant in variants.items():
        normalize = normalizer(net.config, "cuda", torch.float16, variant.input_channels)
        graphs = ShapeGraphs(pixels_to_labels(variant, normalize), pixels.device)
        graphs.capture(tuple(pixels.shape), pixels.dtype)
        replay = graphs.graph(tuple(pixels.shape)).replay
        out[precision] = time_forward(lambda _: replay(), pixels, iters)
print("RESULT " + json.dumps(out))
"""


def run_tree(tree: Path, label: str, batch: int, iters: int) -> dict[str, list[float]]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", CHILD, label, str(batch), str(iters)], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)  # fmt: skip
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter, description=__doc__.split("\n\n")[0])
    p.add_argument("trees", nargs=2, type=Path, help="the two source trees, A then B")
    p.add_argument("--config", default="R-50-D8", help="a bench.perf backbone label")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--rounds", type=int, default=2, help="A, B alternations")
    p.add_argument("--out", type=Path, default=Path("compare_trees.json"))
    args = p.parse_args(argv)
    times: dict[str, dict[str, list[float]]] = {str(t): {} for t in args.trees}
    for _ in range(args.rounds):
        for tree in args.trees:
            for precision, ms in run_tree(tree.resolve(), args.config, args.batch, args.iters).items():
                times[str(tree)].setdefault(precision, []).extend(ms)
    import torch  # only for the device name, after the children have released the GPU

    rows = [
        {"tree": tree, "precision": precision, "img_per_s": round(args.batch * 1000 / statistics.median(ms), 1),
         "p50_ms": round(statistics.median(ms), 2), "samples": len(ms)}
        for tree, by_precision in times.items() for precision, ms in by_precision.items()
    ]  # fmt: skip
    print(f"{args.config}, batch {args.batch}, service graph (uint8 pixels -> labels), {torch.cuda.get_device_name()}")
    print(f"{'tree':<24} {'precision':<9} {'img/s':>8} {'p50 ms':>8}")
    for r in rows:
        print(f"{r['tree']:<24} {r['precision']:<9} {r['img_per_s']:>8} {r['p50_ms']:>8}")
    args.out.write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "config": args.config, "batch": args.batch,
                                    "rounds": args.rounds, "command": "python -m bench.compare_trees " + " ".join(sys.argv[1:]),
                                    "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
