"""A checkpoint of any zoo architecture with random weights and calibrated BN statistics.

    python -m bench.synthetic_checkpoint deeplabv3plus_r50-d8_4xb2-40k_cityscapes-512x1024 /tmp/r50.pth

For speed benchmarks of configs whose trained weights cannot be downloaded here: the service
loads it like any checkpoint, and its activations have the scale of a trained network's.
"""

from __future__ import annotations

import argparse

import torch

from bench.perf import realistic_weights
from model import build_model, get_config, save_checkpoint


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("out")
    args = ap.parse_args(argv)
    net = build_model(get_config(args.config), with_auxiliary=False)
    if torch.cuda.is_available():
        net = net.cuda()
    realistic_weights(net)
    save_checkpoint(net.cpu(), args.out, meta={"training": "none: random weights, BN calibrated (bench.synthetic_checkpoint)"})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
