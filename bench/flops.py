"""Parameters and GFLOPs (2 x multiply-adds) per backbone variant, counted on the meta device.

    python -m bench.flops            # prints a table, writes bench/results/flops.json
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from model import build_model, get_config

VARIANTS = {
    "R-18-D8": "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024",
    "R-18b-D8": "deeplabv3plus_r18b-d8_4xb2-80k_cityscapes-512x1024",
    "R-50-D8": "deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024",
    "R-50b-D8": "deeplabv3plus_r50b-d8_4xb2-80k_cityscapes-512x1024",
    "R-101-D8": "deeplabv3plus_r101-d8_4xb2-40k_cityscapes-512x1024",
    "R-101b-D8": "deeplabv3plus_r101b-d8_4xb2-80k_cityscapes-512x1024",
    "R-101-D16-MG124": "deeplabv3plus_r101-d16-mg124_4xb2-40k_cityscapes-512x1024",
}
# 1024x2048 is Cityscapes whole-image inference; the rest are the table's crop sizes.
SIZES = [(1024, 2048), (512, 1024), (769, 769), (512, 512), (480, 480), (896, 896), (1280, 1280)]


def gflops(net: torch.nn.Module, h: int, w: int) -> float:
    with torch.device("meta"), FlopCounterMode(display=False) as counter:
        net(torch.empty(1, 3, h, w))
    return counter.get_total_flops() / 1e9


def main() -> None:
    rows = []
    for label, name in VARIANTS.items():
        cfg = get_config(name)
        with torch.device("meta"):
            net = build_model(cfg, with_auxiliary=False).eval()
        params = sum(p.numel() for p in net.parameters())
        row = {"variant": label, "config": name, "params_m": round(params / 1e6, 2)}
        for h, w in SIZES:
            row[f"gflops_{h}x{w}"] = round(gflops(net, h, w), 1)
        rows.append(row)
    print(f"{'variant':<16} {'params (M)':>10} " + " ".join(f"{f'GFLOPs {h}x{w}':>17}" for h, w in SIZES))
    for r in rows:
        print(f"{r['variant']:<16} {r['params_m']:>10} " + " ".join(f"{r[f'gflops_{h}x{w}']:>17}" for h, w in SIZES))
    out = Path(__file__).parent / "results" / "flops.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
