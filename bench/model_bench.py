"""Model-only throughput: images/s of one inference backend alone, at several batch sizes.

Times exactly what the service's inference thread does per batch -- ``backend.infer`` on a dense
uint8 batch of bucket-sized RGB images (upload, normalise, network, argmax, labels back to the
host) -- with no HTTP, decoding, resizing or queueing. ``bench.load`` measures the whole service;
dividing the two at the same batch size gives the serving overhead.

    python -m bench.model_bench                                    # CPU, built-in model, batch 1 2 4 8
    python -m bench.model_bench --device cuda --precision fp16 --batch-sizes 1 2 4 8 16 32

Prints a table and writes JSON to bench/results/model_bench_<hardware>_<backend>_<precision>.json.
Needs torch and the model package only (no fastapi/uvicorn).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model.precision import Precision
from service.backends import create_backend, default_device, resolve_backend_name
from model.pipeline.buckets import InputPolicy

RESULTS = Path(__file__).resolve().parent / "results"


def camvid_val() -> Path:
    """CamVid val frames: under $CAMVID_DIR, else shared/ beside or inside the checkout."""
    repo = Path(__file__).resolve().parent.parent
    roots = [os.environ.get("CAMVID_DIR"), repo.parent / "shared" / "data" / "camvid", repo / "shared" / "data" / "camvid"]
    found = [Path(r) / "images" / "val" for r in roots if r and (Path(r) / "images" / "val").is_dir()]
    return found[0] if found else repo.parent / "shared" / "data" / "camvid" / "images" / "val"


def hardware(device: str) -> str:
    """The accelerator's name for CUDA devices, else the CPU model and core count."""
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()
    except (OSError, AttributeError):
        name = platform.processor() or platform.machine()
    return f"{name} ({len(os.sched_getaffinity(0))} cores)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]


def sample_batch(policy: InputPolicy, n: int, images: Path) -> np.ndarray:
    """``n`` real frames prepared as the service prepares them (landscape bucket), or noise."""
    from model.pipeline.decode import load_image

    files = sorted(images.glob("*.jpg"))[:n] if images.is_dir() else []
    frames = [policy.prepare(load_image(f)).pixels for f in files]
    w, h = policy.full_buckets()[0]
    frames = [f for f in frames if f.shape[:2] == (h, w)]
    rng = np.random.default_rng(0)
    while len(frames) < n:
        frames.append(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    return np.stack(frames[:n])


def measure(backend, batch: np.ndarray, warmup: int, min_iters: int, min_seconds: float) -> list[float]:
    """Seconds per ``infer`` call; at least ``min_iters`` calls and ``min_seconds`` in total.
    ``infer`` returns host labels, so each call is complete (synchronised) when it returns."""
    for _ in range(warmup):
        backend.infer(batch)
    times: list[float] = []
    while len(times) < min_iters or sum(times) < min_seconds:
        start = time.perf_counter()
        backend.infer(batch)
        times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="config name / .pth / .onnx / .engine (default: the built-in model)")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--precision", default="auto", choices=["auto", *(p.value for p in Precision)], help="auto: what the backend runs best here")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--warmup", type=int, default=2, help="untimed calls per batch size")
    ap.add_argument("--min-iters", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--images", type=Path, default=None, help="JPEG folder (default: CamVid val)")
    ap.add_argument("--tta", action="store_true", help="the service's multi-scale + flip test-time augmentation (torch)")
    ap.add_argument("--out", type=Path, help="JSON path (default: bench/results/model_bench_<hw>_<backend>_<precision>[_tta].json)")
    args = ap.parse_args(argv)

    device = args.device or default_device()
    backend = create_backend(args.model, args.backend, device, args.precision, tta=args.tta)
    cfg = backend.load()
    precision = backend.precision.value  # what the engine really runs (auto resolved)
    policy = InputPolicy.for_config(cfg)
    w, h = policy.full_buckets()[0]
    rows = []
    for n in args.batch_sizes:
        batch = sample_batch(policy, n, args.images or camvid_val())
        # On a worker thread, as the service's batcher runs it.
        with ThreadPoolExecutor(1, thread_name_prefix="inference") as worker:
            times = worker.submit(measure, backend, batch, args.warmup, args.min_iters, args.min_seconds).result()
        median = statistics.median(times)
        rows.append({"batch_size": n, "iters": len(times), "ms_per_batch_median": round(median * 1e3, 2), "images_per_s": round(n / median, 2)})
        print(f"batch {n:>3}: {n / median:8.2f} images/s  ({median * 1e3:.1f} ms/batch, {len(times)} iters)", flush=True)

    hw = hardware(device)
    result = {
        "benchmark": "model_bench",
        "hardware": hw,
        "device": device,
        "config": cfg.name,
        "backend": resolve_backend_name(args.model, args.backend),
        "tta": args.tta,
        "precision": precision,
        "input_wh": [w, h],
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "backend_details": {k: v for k, v in backend.describe().items() if k != "meta"},
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "rows": rows,
    }
    print(f"\n{hw}: {cfg.name}, {result['backend']} {precision} on {device}, {w}x{h} uint8 in -> labels out")
    print("| batch | images/s | ms/batch |\n|--:|--:|--:|")
    for r in rows:
        print(f"| {r['batch_size']} | {r['images_per_s']:.2f} | {r['ms_per_batch_median']:.1f} |")
    tta = "_tta" if args.tta else ""
    out = args.out or RESULTS / f"model_bench_{slug(hw if device.startswith('cuda') else 'cpu')}_{result['backend']}_{precision}{tta}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
