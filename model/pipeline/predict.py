"""`python -m model.pipeline.predict IMAGE... --out DIR`: label maps as palette PNGs, optional overlays.

Each `DIR/<stem>.png` shows in colour and reads back (`np.array(Image.open(...))`) as class
indices; `--overlay` adds `DIR/<stem>_overlay.jpg`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from ..checkpoint import load_model
from ..cli import argument_parser
from .decode import load_image
from .inference import PRECISIONS, Segmenter
from .render import encode_label_png, encode_overlay_jpeg


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argument_parser("python -m model.pipeline.predict", __doc__)
    p.add_argument("images", nargs="+", type=Path, help="image files to segment")
    p.add_argument("--model", default=None, help="config name or checkpoint path (default: built-in CamVid model)")
    p.add_argument("--config", default=None, help="config name, when the checkpoint's cannot be inferred")
    p.add_argument("--out", required=True, type=Path, help="folder for the label PNGs (created if missing)")
    p.add_argument("--overlay", action="store_true", help="also write a colour overlay JPEG")
    p.add_argument("--tta", action="store_true", help="multi-scale (0.5-1.75) + flip test-time augmentation")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    p.add_argument("--precision", default="fp32", choices=[p.value for p in PRECISIONS], help="inference precision")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        print(f"error: not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    net = load_model(args.model, config=args.config, device=args.device)
    segmenter = Segmenter(net, args.device, args.precision, tta=args.tta)
    palette = net.config.dataset.palette
    args.out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(args.images, desc="segmenting", unit="img"):
        image = load_image(path)
        labels = segmenter.predict([image])[0]
        (args.out / f"{path.stem}.png").write_bytes(encode_label_png(labels, palette))
        if args.overlay:
            (args.out / f"{path.stem}_overlay.jpg").write_bytes(encode_overlay_jpeg(image, labels, palette, quality=90))
    return 0


if __name__ == "__main__":
    sys.exit(main())
