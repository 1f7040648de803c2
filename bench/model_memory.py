"""Peak device memory of a served model, per model-input pixel: the coefficients of the model
repository's load check (``service.repository.capacity.PEAK_VALUES_PER_PIXEL``).

Serves random-weight networks of several zoo configs through the torch backend exactly as the
service does (fused network, CUDA graphs of every warmed batch shape sharing one pool), and
reports, per config, what the device holds beyond the weights after warming batch sizes
1..max at the largest bucket, divided by (max batch x bucket pixels x activation bytes), next to the
estimate the check makes.

    python -m bench.model_memory --device cuda --max-batch 8

Prints a table and writes bench/results/model_memory.json.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch

from model import build_model, get_config
from model.pipeline.buckets import InputPolicy
from service.backends.pytorch import TorchBackend
from service.repository.capacity import needed_bytes, output_stride

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = [
    "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024",
    "deeplabv3plus_r101-d8_4xb2-40k_cityscapes-512x1024",
    "deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
    "deeplabv3plus_r18-d8_camvid-360x480",
]


def measure(name: str, device: str, precision: str, max_batch: int) -> dict:
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_reserved(device)
    backend = TorchBackend(net=build_model(get_config(name)).eval(), device=device, precision=precision)
    backend.load()
    policy = InputPolicy.for_config(backend.config)
    weights = backend.memory_bytes()
    width, height = max(policy.all_buckets(), key=lambda b: b[0] * b[1])
    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    backend.warm_up([(n, height, width) for n in range(1, max_batch + 1)])
    torch.cuda.synchronize(device)
    held = torch.cuda.memory_reserved(device) - base
    peak = torch.cuda.max_memory_reserved(device) - base
    itemsize = torch.empty((), dtype=backend.precision.dtype).element_size()
    per_pixel = (max(held, peak) - weights) / (max_batch * width * height * itemsize)
    row = {
        "config": name, "output_stride": output_stride(backend.config), "bucket": [width, height],
        "precision": backend.precision.value, "max_batch": max_batch, "weights_bytes": weights,
        "held_bytes": held, "peak_reserved_bytes": peak, "values_per_pixel": round(per_pixel, 1),
        "estimate_bytes": needed_bytes(backend, policy, max_batch), "warm_up_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip
    backend.close()
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--configs", nargs="*", default=CONFIGS)
    ap.add_argument("--out", type=Path, default=RESULTS / "model_memory.json")
    args = ap.parse_args(argv)
    rows = [measure(name, args.device, args.precision, args.max_batch) for name in args.configs]
    print(f"{'config':60s} {'os':>3s} {'weights MB':>10s} {'held MB':>9s} {'peak MB':>9s} {'values/px':>9s} {'estimate MB':>11s}")
    for r in rows:
        mb = 1 << 20
        print(f"{r['config']:60s} {r['output_stride']:3d} {r['weights_bytes'] / mb:10.0f} {r['held_bytes'] / mb:9.0f} "
              f"{r['peak_reserved_bytes'] / mb:9.0f} {r['values_per_pixel']:9.1f} {r['estimate_bytes'] / mb:11.0f}")  # fmt: skip
    doc = {
        "what": "device memory a served torch model holds after warming batch sizes 1..max at its largest bucket",
        "command": "python -m bench.model_memory " + " ".join(sys.argv[1:] if argv is None else argv),
        "hardware": torch.cuda.get_device_name(args.device), "torch": torch.__version__,
        "date": datetime.date.today().isoformat(), "rows": rows,
    }  # fmt: skip
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
