"""Training recipes side by side: `python -m bench.recipes WORK_DIR... [--baseline MIOU] [--out F]`.

Each run is scored by its validation at the schedule's **last** iteration (the rule of
`model.training.crossval`: a fixed schedule, no picking the best checkpoint on the images that
score it). Prints a table (recipe options, val mIoU / aAcc / mAcc, the thin classes' IoU, wall
time, mean img/s) and writes the rows, per-class IoU included, as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shlex
import statistics
import sys
from pathlib import Path

from model.training.crossval import final_scores
from model.training.train import build_parser

#: options that do not change what a run learns or how it is scored: paths, logging, checkpoints, time limits
NO_EFFECT = {
    "data", "work_dir", "device", "max_minutes", "log_interval", "ckpt_interval", "val_interval", "resume",
    "portable_state", "keep_ckpts",
}  # fmt: skip


def recipe(argv: list[str]) -> str:
    """The run's options as its own parser read them, less those of `NO_EFFECT` and those left at
    their defaults: an option given twice (a script's default, then the caller's) counts once,
    with its last value, as it did for the run."""
    parser = build_parser()
    kept: list[str] = []
    for dest, value in vars(parser.parse_args(argv)).items():
        if dest == "config" or dest in NO_EFFECT or value == parser.get_default(dest):
            continue
        option = "--" + dest.replace("_", "-")
        kept += [option] if value is True else [option, *map(str, value if isinstance(value, list) else [value])]
    return shlex.join(kept)


def summarise(work_dir: Path) -> dict:
    records = [json.loads(line) for line in (work_dir / "log.jsonl").read_text().splitlines() if line.strip()]
    start = next(r for r in records if r["kind"] == "start")
    scores = final_scores(work_dir)
    if scores is None:
        raise SystemExit(f"{work_dir}: the run has not ended with a validation")
    ends = [r for r in records if r["kind"] == "end"]
    rates = [r["img_s"] for r in records if r["kind"] == "train"]
    return {
        "run": work_dir.name, "config": start["config"], "recipe": recipe(start["argv"]), "device": start["device"],
        "iter": scores["iter"], "mIoU": scores["mIoU"], "aAcc": scores["aAcc"], "mAcc": scores["mAcc"],
        "per_class_IoU": {c: v["IoU"] for c, v in scores["per_class"].items()},
        "wall_s": round(ends[-1]["wall_s"], 1), "img_s": round(statistics.median(rates), 1) if rates else None,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.split("\n\n")[0])
    ap.add_argument("work_dirs", nargs="+", type=Path)
    ap.add_argument("--baseline", type=float, help="the mIoU to beat, printed as a difference")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    rows = [summarise(w) for w in args.work_dirs]
    thin = ("pole", "sign_symbol", "fence")
    print("| run | recipe | iter | mIoU | vs baseline | aAcc | mAcc | " + " | ".join(thin) + " | wall s | img/s |")
    print("|---|---|--:|--:|--:|--:|--:|" + "--:|" * len(thin) + "--:|--:|")
    for r in rows:
        diff = f"{r['mIoU'] - args.baseline:+.2f}" if args.baseline is not None else ""
        classes = " | ".join(str(r["per_class_IoU"].get(c)) for c in thin)
        print(f"| {r['run']} | `{r['recipe']}` | {r['iter']} | {r['mIoU']} | {diff} | {r['aAcc']} | {r['mAcc']} | {classes} | {r['wall_s']} | {r['img_s']} |")
    if args.out:
        command = "python -m bench.recipes " + shlex.join(sys.argv[1:] if argv is None else argv)
        doc = {"benchmark": "recipes", "date": datetime.date.today().isoformat(), "command": command,
               "baseline_mIoU": args.baseline, "rows": rows}  # fmt: skip
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
