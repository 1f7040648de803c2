"""What a serving precision costs in accuracy: `python -m bench.precision_accuracy --data DIR [--precisions fp32 bf16] [--test-scale WxH]`.

Each precision's labels come from the service's own path (`InputPolicy.prepare`, the backend's
`infer`, `restore_labels`), on a labelled split (default: CamVid val), so the figure is what a
client would get; `model.training.evaluate` instead measures the model the mmseg way (autocast,
bilinear logits). Prints mIoU per precision, pixel agreement with the first precision and the
seconds each took, and writes the rows as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from bench.model_bench import hardware
from model.cli import test_scale_arg
from model.pipeline.buckets import InputPolicy
from model.pipeline.decode import load_image
from model.pipeline.restore import restore_labels
from model.training.data import read_label
from model.training.evaluate import dataset_for
from model.training.metrics import IoUAccumulator
from service.backends import create_backend, default_device


def served_labels(backend, policy: InputPolicy, image: Path) -> np.ndarray:
    prepared = policy.prepare(load_image(image))
    return restore_labels(backend.infer(prepared.pixels[None])[0], prepared)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m bench.precision_accuracy", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="checkpoint or config name (default: the built-in model)")
    ap.add_argument("--data", required=True, help="labelled dataset root")
    ap.add_argument("--split", default="val")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], help="the first is the reference for agreement")
    ap.add_argument("--test-scale", type=test_scale_arg, default=None, metavar="WxH",
                    help="serve at this size instead of the model's own, as the service's --test-scale does")
    ap.add_argument("--limit", type=int, default=None, help="first N images only")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    device = args.device or default_device()

    rows, reference = [], None
    for precision in args.precisions:
        backend = create_backend(args.model, device=device, precision=precision, cuda_graphs=False, test_scale=args.test_scale)
        cfg = backend.load()
        dataset = dataset_for(args.data, args.split, None, cfg.dataset.reduce_zero_label)
        pairs = dataset.pairs[: args.limit]
        policy, acc = InputPolicy.for_config(cfg), IoUAccumulator(cfg.num_classes, cfg.dataset.ignore_index)
        start, labels = time.perf_counter(), []
        for image, seg in pairs:
            labels.append(served_labels(backend, policy, image))
            acc.update(labels[-1], read_label(seg, dataset.reduce_zero_label))
        seconds = time.perf_counter() - start
        reference = reference or labels
        same = sum(int((a == b).sum()) for a, b in zip(labels, reference)) / sum(a.size for a in labels)
        scores = acc.compute().as_dict(cfg.dataset.classes)
        rows.append({"precision": backend.precision.value, "images": len(pairs), "test_scale": list(cfg.test_scale),
                     "mIoU": scores["mIoU"], "aAcc": scores["aAcc"], "agreement": round(same, 5), "seconds": round(seconds, 1),
                     "per_class_IoU": {c: v["IoU"] for c, v in scores["per_class"].items()}})  # fmt: skip
        backend.close()

    print(f"{hardware(device)}: {cfg.name} served at {cfg.test_scale[0]}x{cfg.test_scale[1]}, {args.split} of {args.data}")
    print(f"| precision | mIoU | aAcc | labels as {args.precisions[0]} | seconds |\n|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['precision']} | {r['mIoU']} | {r['aAcc']} | {100 * r['agreement']:.2f}% | {r['seconds']} |")
    if args.out:
        record = {"benchmark": "precision_accuracy", "hardware": hardware(device), "device": device, "config": cfg.name,
                  "model": args.model or "built-in", "data": f"{args.data} [{args.split}]", "date": datetime.date.today().isoformat(),
                  "command": "python -m bench.precision_accuracy " + shlex.join(sys.argv[1:] if argv is None else argv), "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")
    return rows


if __name__ == "__main__":
    main()
