"""`python -m model.training.evaluate CONFIG_OR_CHECKPOINT --data DIR --split val [--tta]`: mmseg's metrics.

Predictions come from `Segmenter` (the config's whole or slide inference, optional multi-scale +
flip), at each image's original size, against labels read as mmseg reads them
(`reduce_zero_label` included); areas are summed over the split (`model.training.metrics`).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from ..checkpoint import load_model
from ..configs import with_test_scale
from ..cli import argument_parser, test_scale_arg
from .data import LAYOUTS, SegDataset, open_dataset, read_label
from ..pipeline.inference import PRECISIONS, Segmenter
from .metrics import IoUAccumulator, SegMetrics
from ..pipeline.decode import load_image


def dataset_for(root: str | Path, split: str, layout: str | None, reduce_zero_label: bool) -> SegDataset:
    """A generic tree takes the model's `reduce_zero_label`; a known layout keeps its own."""
    ds = open_dataset(root, split, layout)
    return open_dataset(root, split, ds.layout, reduce_zero_label) if ds.layout == "generic" else ds


def evaluate(segmenter: Segmenter, dataset: SegDataset, batch: int = 4, progress: bool = False) -> SegMetrics:
    cfg = segmenter.config
    acc = IoUAccumulator(cfg.num_classes, cfg.dataset.ignore_index)
    pairs = dataset.pairs
    for start in tqdm(range(0, len(pairs), batch), desc="evaluate", unit="batch", disable=not progress):
        chunk = pairs[start : start + batch]
        preds = segmenter.predict([load_image(img) for img, _ in chunk])
        for pred, (_, seg) in zip(preds, chunk):
            acc.update(pred, read_label(seg, dataset.reduce_zero_label))
    return acc.compute()


def main(argv: list[str] | None = None) -> int:
    ap = argument_parser("python -m model.training.evaluate", __doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="checkpoint file or zoo config name (default: the built-in model)")
    ap.add_argument("--data", required=True, help="dataset root (any layout of model.training.data.LAYOUTS)")
    ap.add_argument("--split", default="val", help="dataset split to evaluate")
    ap.add_argument("--layout", default=None, choices=sorted(LAYOUTS), help="dataset layout (default: detected from the folder)")
    ap.add_argument("--config", default=None, help="config name, for checkpoints that do not record one")
    ap.add_argument("--test-scale", type=test_scale_arg, default=None, metavar="WxH", help="infer at this size instead of the model's own (e.g. 480x360)")
    ap.add_argument("--tta", action="store_true", help="multi-scale (0.5..1.75) + flip, as mmseg's TTA")
    ap.add_argument("--device", default="cpu", help="torch device")
    ap.add_argument("--precision", default="fp32", choices=[p.value for p in PRECISIONS], help="inference precision")
    ap.add_argument("--batch", type=int, default=4, help="images per forward pass")
    ap.add_argument("--limit", type=int, default=None, help="first N images only (default: all)")
    ap.add_argument("--json", type=Path, default=None, help="also write the metrics here")
    args = ap.parse_args(argv)

    net = load_model(args.model, config=args.config, device=args.device)
    if args.test_scale:
        net.config = with_test_scale(net.config, args.test_scale)
    cfg = net.config
    dataset = dataset_for(args.data, args.split, args.layout, cfg.dataset.reduce_zero_label)
    if args.limit:
        dataset = SegDataset(dataset.layout, dataset.root, dataset.split, dataset.pairs[: args.limit], dataset.reduce_zero_label)
    segmenter = Segmenter(net, device=args.device, precision=args.precision, tta=args.tta)
    t0 = time.perf_counter()
    metrics = evaluate(segmenter, dataset, args.batch, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - t0
    print(f"{cfg.name} on {dataset.root} [{args.split}, {len(dataset)} images, {dataset.layout}]"
          f"{' +TTA' if args.tta else ''} in {seconds:.1f} s")  # fmt: skip
    print(metrics.table(cfg.dataset.classes))
    if args.json:
        record = {"model": str(args.model or "built-in"), "config": cfg.name, "split": args.split, "images": len(dataset),
                  "test_scale": list(cfg.test_scale), "tta": args.tta, **metrics.as_dict(cfg.dataset.classes)}  # fmt: skip
        args.json.write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
