"""Is data loading on the training critical path? Images/s of each stage, alone and together.

For each batch size: in-memory augmentation on the device alone ("augment"), the optimisation
step on one fixed batch alone ("step"), and both as `model.training.train` runs them ("train"). If
"train" is close to "step", data loading is off the critical path. "stream" is the disk path
(DataLoader workers decoding and augmenting on the CPU) for datasets too large to keep in memory.
Prints a table and writes JSON.

    PYTHONPATH=. python bench/train_throughput.py --data ../shared/data/camvid --device cuda --amp bf16 --channels-last
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from model import build_model, get_config
from model.training.data import TrainBatches, TrainPipeline, open_dataset
from model.training.init import init_weights
from model.training.loss import LossConfig
from model.training.step import train_step
from model.training.train import AMP_DTYPES, TrainForward


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(fn, steps: int, imgs_per_step: int, device: torch.device, warmup: int) -> float:
    for k in range(warmup):
        fn(k)
    _sync(device)
    t0 = time.perf_counter()
    for k in range(warmup, warmup + steps):
        fn(k)
    _sync(device)
    return steps * imgs_per_step / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="deeplabv3plus_r18-d8_camvid-360x480")
    ap.add_argument("--data", required=True)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    ap.add_argument("--amp", choices=sorted(AMP_DTYPES), default="none")
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--stream-workers", type=int, default=0, help="also time the disk path with N workers")
    ap.add_argument("--json", type=Path, default=Path("bench/results/train_throughput.json"))
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = device.type == "cuda"
    cfg = get_config(args.config)
    dataset = open_dataset(args.data, "train")
    pipe = TrainPipeline.from_config(cfg)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    rows = []
    preload_s = None
    for batch in args.batches:
        t0 = time.perf_counter()
        memory = TrainBatches(dataset, pipe, batch, seed=0, device=device)
        preload_s = preload_s or time.perf_counter() - t0
        net = build_model(cfg)
        init_weights(net)
        net.to(device, memory_format=fmt).train()
        forward = torch.compile(TrainForward(net)) if args.compile else TrainForward(net)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
        loss_cfg = LossConfig()
        fixed_img, fixed_label = memory.batch(0)
        fixed_img = fixed_img.contiguous(memory_format=fmt)

        def step(_: int) -> None:
            train_step(forward, opt, scaler, fixed_img, fixed_label, loss_cfg, AMP_DTYPES[args.amp])

        def augment(k: int) -> None:
            memory.batch(k)

        stream = memory.batches(0, 10**9)  # as model.training.train consumes it (prefetching on a GPU)

        def both(_: int) -> None:
            img, label = next(stream)
            train_step(forward, opt, scaler, img.contiguous(memory_format=fmt), label, loss_cfg, AMP_DTYPES[args.amp])

        row = {"batch": batch}
        for name, fn in (("augment", augment), ("step", step), ("train", both)):
            row[name] = round(_rate(fn, args.steps, batch, device, args.warmup), 1)
        if device.type == "cuda":
            row["max_mem_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        stream.close()
        rows.append(row)
        print(row, flush=True)
    disk_rate = None
    if args.stream_workers:
        disk = TrainBatches(dataset, pipe, args.batches[0], seed=0, device=device, workers=args.stream_workers)
        it = disk.batches(0, 10**9)
        disk_rate = round(_rate(lambda _: next(it), args.steps * 2, args.batches[0], device, args.warmup), 1)

    result = {
        "config": cfg.name,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": args.amp,
        "channels_last": args.channels_last,
        "compile": args.compile,
        "crop": list(cfg.crop_size),
        "preload_s": round(preload_s, 2),
        "rows": rows,
        "stream": {"workers": args.stream_workers, "batch": args.batches[0], "img_s": disk_rate},
        "torch": str(torch.__version__),
    }
    print(f"\n{result['device']}, {cfg.name}, crop {cfg.crop_size}, amp {args.amp}, channels_last {args.channels_last}, "
          f"compile {args.compile}; dataset preloaded to {device} in {preload_s:.1f} s")  # fmt: skip
    print("| batch | augment img/s | step img/s | train img/s | train/step |")
    print("|------:|--------------:|-----------:|------------:|-----------:|")
    for r in rows:
        print(f"| {r['batch']} | {r['augment']} | {r['step']} | {r['train']} | {r['train'] / r['step']:.2f} |")
    if disk_rate:
        print(f"disk stream, {args.stream_workers} CPU workers, batch {args.batches[0]}: {disk_rate} img/s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
