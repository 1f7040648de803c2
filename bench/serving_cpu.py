"""CPU cost of the serving path around the model, per stage and across threads.

    python -m bench.serving_cpu --images DIR [--config NAME] [--threads 1 2 4 8 12]

Per image, as the service does it: decode (`model.pipeline.decode.decode`), bring to the model's input
policy (`InputPolicy.prepare`), restore a label map to the original size (`InputPolicy.restore`)
and encode it as PNG (`render.encode_label_png`). The label maps are the images' own grey levels
divided into the config's class count (smooth regions, like real predictions). Single-thread
milliseconds per stage, then images/s of the whole chain over a thread pool, which shows how far
the GIL lets the codec threads scale: the service needs `target images/s x ms per image / 1000`
cores of this, beside the event loop and the inference thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from model import get_config
from model.pipeline import decode, render
from model.pipeline.buckets import InputPolicy

MAX_PIXELS = 40_000_000


def stages(data: bytes, policy: InputPolicy, cfg) -> dict[str, float]:
    """Milliseconds of each stage for one image."""
    times, t = {}, time.perf_counter()
    rgb = decode.decode(data, MAX_PIXELS)
    times["decode"], t = (time.perf_counter() - t) * 1e3, time.perf_counter()
    prepared = policy.prepare(rgb)
    times["prepare"], t = (time.perf_counter() - t) * 1e3, time.perf_counter()
    labels_in = (prepared.pixels[..., 1] // (256 // cfg.num_classes + 1)).astype(np.uint8)
    t = time.perf_counter()
    labels = InputPolicy.restore(labels_in, prepared)
    times["restore"], t = (time.perf_counter() - t) * 1e3, time.perf_counter()
    render.encode_label_png(labels, cfg.dataset.palette)
    times["encode_png"] = (time.perf_counter() - t) * 1e3
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True, help="folder of .jpg files")
    ap.add_argument("--config", default="deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--rounds", type=int, default=3, help="passes over the images per thread count")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    cfg = get_config(args.config)
    policy = InputPolicy.for_config(cfg)
    images = [p.read_bytes() for p in sorted(args.images.glob("*.jpg"))]
    if not images:
        raise SystemExit(f"no .jpg files in {args.images}")
    per_stage = [stages(d, policy, cfg) for d in images for _ in range(args.rounds)]
    ms = {k: round(statistics.median(t[k] for t in per_stage), 2) for k in per_stage[0]}
    print(f"{len(images)} images, {args.config}: median ms per image, one thread")
    for k, v in ms.items():
        print(f"  {k:<11} {v:8.2f}")
    print(f"  {'total':<11} {sum(ms.values()):8.2f}")
    scaling = []
    for n in args.threads:
        work = images * args.rounds * max(1, n)
        with ThreadPoolExecutor(n) as pool:
            t = time.perf_counter()
            list(pool.map(lambda d: stages(d, policy, cfg), work))
            rate = len(work) / (time.perf_counter() - t)
        scaling.append({"threads": n, "img_per_s": round(rate, 1)})
        print(f"{n:>3} threads: {rate:7.1f} images/s")
    result = {"benchmark": "serving_cpu", "config": args.config, "images": f"{len(images)} from {args.images}",
              "cpu_count": os.cpu_count(), "ms_per_image": ms, "threads": scaling}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
