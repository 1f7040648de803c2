"""`python -m model.training.crossval CONFIG --data DIR --folds 5 [train options]`: K-fold
cross-validation of one training recipe on the train split.

Fold i trains on ``train%K!=i`` and is scored on ``train%K=i`` (contiguous blocks, so neighbouring
video frames do not straddle the two sides) at the schedule's **last** iteration: picking each
fold's best checkpoint on its own held-out images would make the estimate optimistic, and the
final model is trained on a fixed schedule too. ``--groups 0001TP 0006R0 0016E5`` folds by file-name
prefix instead (leave one group out: ``train:!P`` / ``train:P``): CamVid's frames are named after
their video sequence, and a held-out sequence is what its test split is (a sequence train never
shows), which neighbouring blocks of one sequence are not. Every other option goes to
`model.training.train` unchanged (``--iters``, ``--ohem-min-kept``, ``--class-weight``, ...), so
two recipes compare on the same folds. ``--only 0 1`` (or ``--only 0006R0``) runs some folds (e.g.
one per GPU, in separate calls); the summary reads every fold finished under ``--work-dir``.
``--test-scales 480x360 840x630`` also scores each finished fold's final weights on its held-out
images at those inference sizes: the size is part of the recipe, and one chosen on images the model
trained on can be wrong for the ones it has not seen.

Prints a table and writes WORK_DIR/crossval.json: per fold mIoU, aAcc and per-class IoU, and
their mean and standard deviation (and per inference size, with ``--test-scales``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ..checkpoint import load_model
from ..cli import test_scale_arg
from ..configs import with_test_scale
from ..pipeline.inference import Segmenter
from .evaluate import dataset_for, evaluate
from .train import main as train_main


def final_scores(work_dir: Path) -> dict | None:
    """The validation at the run's last iteration, from its log (None if the run has not ended)."""
    log = work_dir / "log.jsonl"
    if not log.is_file():
        return None
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    ends = [r for r in records if r["kind"] == "end"]
    if not ends:
        return None
    last = [r for r in records if r["kind"] == "val" and r["iter"] == ends[-1]["iter"]]
    return last[-1] if last else None


def spread(values: list[float]) -> dict:
    """Mean and sample std; None where no fold has a value (or one fold, for the std)."""
    mean = round(statistics.fmean(values), 2) if values else None
    return {"mean": mean, "std": round(statistics.stdev(values), 2) if len(values) > 1 else None}


def summarise(folds: dict[str, dict]) -> dict:
    """Mean and standard deviation over folds, overall and per class."""
    classes = list(next(iter(folds.values()))["per_class"]) if folds else []
    return {
        "folds": {i: {k: s[k] for k in ("iter", "mIoU", "aAcc", "per_class")} for i, s in folds.items()},
        "mIoU": spread([s["mIoU"] for s in folds.values()]) if folds else None,
        "per_class_IoU": {
            c: spread([s["per_class"][c]["IoU"] for s in folds.values() if s["per_class"][c]["IoU"] is not None]) for c in classes
        },
    }


def held_out_mIoU_by_test_scale(fold_dir: Path, data: str, held_out: str, scales: list[str], device: str) -> dict[str, float]:
    """The fold's final weights (the export of its fixed schedule) scored on its held-out split at
    each inference size."""
    net = load_model(str(fold_dir / "final_model.pth"), device=device)
    dataset = dataset_for(data, held_out, None, net.config.dataset.reduce_zero_label)
    scores = {}
    for scale in scales:
        net.config = with_test_scale(net.config, scale)
        scores[scale] = evaluate(Segmenter(net, device=device), dataset).as_dict(net.config.dataset.classes)["mIoU"]
    return scores


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m model.training.crossval", description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--data", required=True)
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--folds", type=int, default=5, help="K contiguous blocks of train (default: 5)")
    how.add_argument("--groups", nargs="+", metavar="PREFIX", help="leave one file-name prefix out (e.g. CamVid's sequences)")
    ap.add_argument("--only", nargs="*", default=None, help="folds to run now: indices, or prefixes with --groups (default: all)")
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--device", default="cpu", help="torch device, for training and for --test-scales")
    ap.add_argument("--test-scales", nargs="+", type=test_scale_arg, default=[], metavar="WxH",
                    help="also score each finished fold's final weights on its held-out images at these inference sizes")  # fmt: skip
    args, train_args = ap.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.groups:
        folds = {g: (f"train:!{g}", f"train:{g}") for g in args.groups}
    elif args.folds >= 2:
        folds = {str(i): (f"train%{args.folds}!={i}", f"train%{args.folds}={i}") for i in range(args.folds)}
    else:
        ap.error("--folds must be at least 2")
    for fold in args.only if args.only is not None else folds:
        if fold not in folds:
            ap.error(f"--only {fold}: the folds are {', '.join(folds)}")
        rest, held_out = folds[fold]
        train_main([
            args.config, "--data", args.data, "--work-dir", str(args.work_dir / f"fold{fold}"),
            "--train-split", rest, "--val-split", held_out, "--device", args.device, *train_args,
        ])  # fmt: skip
    finished = {f: s for f in folds if (s := final_scores(args.work_dir / f"fold{f}")) is not None}
    summary = {"config": args.config, "folds_total": len(folds), "train_args": train_args, **summarise(finished)}
    if args.test_scales:
        by_fold = {f: held_out_mIoU_by_test_scale(args.work_dir / f"fold{f}", args.data, folds[f][1], args.test_scales, args.device)
                   for f in finished}  # fmt: skip
        summary["mIoU_by_test_scale"] = {
            scale: {"folds": {f: scores[scale] for f, scores in by_fold.items()}, **spread([s[scale] for s in by_fold.values()])}
            for scale in args.test_scales
        }
    (args.work_dir / "crossval.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("| fold | iter | mIoU | aAcc |\n|--:|--:|--:|--:|")
    for f, s in finished.items():
        print(f"| {f} | {s['iter']} | {s['mIoU']} | {s['aAcc']} |")
    if summary["mIoU"] is not None:
        print(f"mIoU over {len(finished)} of {len(folds)} folds: {summary['mIoU']['mean']} (std {summary['mIoU']['std']})")
    for scale, scored in summary.get("mIoU_by_test_scale", {}).items():
        print(f"held-out mIoU at {scale}: {scored['mean']} (std {scored['std']}) over folds {scored['folds']}")
    return summary


if __name__ == "__main__":
    main()
