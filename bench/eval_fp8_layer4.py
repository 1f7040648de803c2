"""What FP8 changes in a trained network's scores: the built-in model on a dataset split, with its
layer4 (and ASPP bottleneck) forced to FP8, against fp32.

    python -m bench.eval_fp8_layer4 --data ../shared/data/camvid [--split val] [--device cpu] [--out FILE]

The built-in model (R-18-D8) is the one trained network here; `use_fp8` leaves its layer4 (512
channels) and bottleneck (128) in fp16 by default, so its thresholds are lowered to take them.
On the CPU the FP8 layers run their PyTorch reference (the same e4m3 values, fp32 sums), so the
scores measure the quantization, not a kernel. Prints mIoU per variant, writes JSON (default
bench/results/eval_fp8_layer4_<split>_<device>.json).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from model import DEFAULT_MODEL, load_model
from model.accel.fast import FastDeepLabV3Plus, optimize_for_inference, use_fp8
from model.pipeline.inference import Segmenter
from model.training.evaluate import dataset_for, evaluate


class ThreeChannels(torch.nn.Module):
    """A fast network taking the 3-channel input `Segmenter` gives (it wants zeros up to 8)."""

    def __init__(self, fast: FastDeepLabV3Plus):
        super().__init__()
        self.fast, self.config, self.meta = fast, fast.config, fast.meta

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast(F.pad(x, (0, 0, 0, 0, 0, self.fast.input_channels - x.shape[1])))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True)
    ap.add_argument("--split", default="val")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    net = load_model(DEFAULT_MODEL, device=args.device).eval()
    fast = optimize_for_inference(net)
    variants = {
        "reference fp32": net,
        "fast fp32": ThreeChannels(fast),
        "fp8 layer4": ThreeChannels(use_fp8(copy.deepcopy(fast), min_channels=sys.maxsize, stage_channels=512)),
        "fp8 layer4 + ASPP bottleneck": ThreeChannels(use_fp8(copy.deepcopy(fast), min_channels=128, stage_channels=512)),
    }
    dataset = dataset_for(args.data, args.split, None, net.config.dataset.reduce_zero_label)
    rows = []
    for name, variant in variants.items():
        metrics = evaluate(Segmenter(variant, device=args.device, precision="fp32"), dataset)
        rows.append({"variant": name, **metrics.as_dict(net.config.dataset.classes)})
        print(f"{name:<30} mIoU {rows[-1]['mIoU']:6.2f}  aAcc {rows[-1]['aAcc']:6.2f}", flush=True)
    out = args.out or Path(__file__).parent / "results" / f"eval_fp8_layer4_{args.split}_{args.device}.json"
    meta = {"model": DEFAULT_MODEL, "split": args.split, "images": len(dataset.pairs), "device": args.device,
            "date": datetime.date.today().isoformat(),
            "command": "python -m bench.eval_fp8_layer4 " + " ".join(sys.argv[1:] if argv is None else argv)}  # fmt: skip
    out.write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
