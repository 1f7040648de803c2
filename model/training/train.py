"""Train DeepLabV3+ with mmsegmentation's recipe: `python -m model.training.train CONFIG --data DIR`.

Multi-GPU / multi-node through torchrun (DDP + SyncBatchNorm on GPUs, gloo on CPU):
    torchrun --nproc-per-node N -m model.training.train CONFIG --data DIR

Defaults are mmseg's: the config's crop, train scale, batch per GPU and iterations; SGD lr 0.01,
momentum 0.9, weight decay 5e-4, poly decay (power 0.9) to 1e-4 by iteration; cross-entropy
(ignore 255) on the decode head + 0.4 x on the auxiliary head; fp32 unless the config is an AMP
one. Options beyond mmseg's defaults (bf16, OHEM, class weights, EMA, channels_last,
torch.compile) are opt-in. Every `--ckpt-interval` iterations (and on `--max-minutes`) the run
state goes to WORK_DIR/iter_K.pth; `--resume` continues the newest bit-identically
(`--portable-state` also writes a quarter-size WORK_DIR/portable_state.pth to carry a run to another
machine, resumed from with `--resume PATH`, closely but not bit-identically). The schedule's
last weights are exported in the serving format to WORK_DIR/final_model.pth (the model of a fixed
recipe, e.g. trained on train+val); with validation data, also the best by val mIoU to best_model.pth.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..checkpoint import load_model, load_state, save_checkpoint
from ..cli import argument_parser, test_scale_arg
from ..configs import ModelConfig, get_config, with_test_scale
from .data import LAYOUTS, TrainBatches, TrainPipeline, open_dataset
from .data.statistics import class_pixel_counts
from .evaluate import dataset_for, evaluate
from ..pipeline.inference import Segmenter
from ..network import DeepLabV3Plus, build_model
from . import dist
from .init import init_weights
from .logs import RunLog
from .loss import LossConfig, median_frequency_weights
from .schedule import Deadline, poly_lr, set_lr
from .state import load_state as load_run_state
from .state import last_checkpoint, save_run_state
from .step import train_step

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainForward(nn.Module):
    """Routes DDP's forward to `forward_train`, so DDP prepares its gradient hooks as usual."""

    def __init__(self, net: DeepLabV3Plus):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.forward_train(x)


def build_parser() -> argparse.ArgumentParser:
    """The training CLI (also how `bench.recipes` reads a run's recorded argv)."""
    ap = argument_parser("python -m model.training.train", __doc__.splitlines()[0])
    ap.add_argument("config", help="config name (see `python -m model list`)")
    ap.add_argument("--data", required=True, help="dataset root (layout detected, see model.training.data.LAYOUTS)")
    ap.add_argument("--layout", default=None, choices=sorted(LAYOUTS), help="dataset layout (default: detected)")
    ap.add_argument("--train-split", default="train", help="split to train on: train, train+val, or train%%5!=0 (all but fold 0 of 5)")
    ap.add_argument("--val-data", default=None, help="validation root (default: --data); 'none' to skip")
    ap.add_argument("--val-split", default="val", help="split to validate on, e.g. val or train%%5=0 (the held-out fold)")
    ap.add_argument("--work-dir", type=Path, default=None, help="checkpoints and logs (default: work_dirs/CONFIG)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device")
    ap.add_argument("--iters", type=int, default=None, help="iterations (default: the config's)")
    ap.add_argument("--batch", type=int, default=None, help="per process (default: the config's batch per GPU)")
    ap.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"), help="default: the config's")
    ap.add_argument("--scale", type=int, nargs=2, default=None, metavar=("W", "H"), help="RandomResize base scale (default: the config's)")
    ap.add_argument("--test-scale", type=test_scale_arg, default=None, metavar="WxH", help="validate at this size and record it in the exported models (default: the config's)")
    ap.add_argument("--lr", type=float, default=0.01, help="initial learning rate")
    ap.add_argument("--min-lr", type=float, default=1e-4, help="learning rate at the last iteration")
    ap.add_argument("--power", type=float, default=0.9, help="poly decay power")
    ap.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    ap.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay")
    ap.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None, help="default: fp16 for -amp configs, else none")
    ap.add_argument("--aux-weight", type=float, default=0.4, help="auxiliary head loss weight")
    ap.add_argument("--ohem-min-kept", type=int, default=None, help="default: the config's (MG124 rows: 100000)")
    ap.add_argument("--ohem-thresh", type=float, default=None, help="OHEM probability threshold (default: none, keep the min-kept hardest pixels)")
    ap.add_argument("--class-weight", choices=("none", "median-freq"), default="none", help="loss class weights")
    ap.add_argument("--ema", type=float, default=None, metavar="DECAY", help="evaluate/export an EMA of the weights")
    ap.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    ap.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    ap.add_argument("--workers", type=int, default=0, help="0: keep the dataset on the device; N: stream from disk")
    ap.add_argument("--seed", type=int, default=0, help="seed for weights init, data order and augmentation")
    ap.add_argument("--load-from", default=None, help="initial weights (checkpoint or zoo name); mismatched keys skipped")
    ap.add_argument("--resume", nargs="?", const="auto", default=None, help="a run state file; bare: the newest in WORK_DIR")
    ap.add_argument("--ckpt-interval", type=int, default=2000, help="iterations between run states")
    ap.add_argument("--portable-state", action="store_true", help="also write WORK_DIR/portable_state.pth (fp16 weights, no momentum) with each run state")
    ap.add_argument("--keep-ckpts", type=int, default=2, help="run states kept in WORK_DIR (newest)")
    ap.add_argument("--val-interval", type=int, default=2000, help="iterations between validations")
    ap.add_argument("--log-interval", type=int, default=50, help="iterations between log lines")
    ap.add_argument("--max-minutes", type=float, default=None, help="save and stop before this much wall time from the run's start, data loading included (checked every --log-interval iterations, one interval ahead)")
    return ap


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_config(args: argparse.Namespace) -> ModelConfig:
    cfg = get_config(args.config)
    if args.crop:
        cfg = dataclasses.replace(cfg, crop_size=tuple(args.crop))
    if args.scale:
        cfg = dataclasses.replace(cfg, train_scale=tuple(args.scale))
    if args.test_scale:
        cfg = with_test_scale(cfg, args.test_scale)
    args.iters = args.iters or cfg.iters
    args.batch = args.batch or cfg.batch_per_gpu
    args.amp = args.amp or ("fp16" if cfg.amp else "none")
    args.ohem_min_kept = args.ohem_min_kept if args.ohem_min_kept is not None else cfg.ohem_min_kept
    return cfg


def load_initial_weights(net: DeepLabV3Plus, source: str) -> list[str]:
    """Copy every same-named, same-shaped tensor (a fine-tune's backbone); returns what was skipped."""
    src = load_model(source).state_dict()
    own = net.state_dict()
    take = {k: v for k, v in src.items() if k in own and v.shape == own[k].shape}
    net.load_state_dict({**own, **take})
    return sorted(set(own) - set(take))


def export_model(net: DeepLabV3Plus, path: Path, meta: dict) -> Path:
    """Serving checkpoint: fp16 weights without the training-only auxiliary head."""
    clean = build_model(net.config, with_auxiliary=False)
    load_state(clean, {k: v for k, v in net.state_dict().items() if not k.startswith("auxiliary_head.")}, "training")
    return save_checkpoint(clean, path, meta, half=True)


def _dropout_seed(seed: int, iteration: int, rank: int, world: int) -> int:
    return seed * 1_000_003 + iteration * world + rank


def train(args: argparse.Namespace, argv: list[str]) -> dict:
    deadline = Deadline(args.max_minutes)
    info = dist.setup(args.device)
    cfg = resolve_config(args)
    work_dir = args.work_dir or Path("work_dirs") / cfg.name
    device, amp_dtype = info.device, AMP_DTYPES[args.amp]
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed crop size: pick the fastest kernels once

    train_set = open_dataset(args.data, args.train_split, args.layout)
    val_root = None if args.val_data == "none" else (args.val_data or args.data)
    val_set = dataset_for(val_root, args.val_split, args.layout, cfg.dataset.reduce_zero_label) if val_root else None
    class_weight = None
    if args.class_weight == "median-freq":
        class_weight = median_frequency_weights(class_pixel_counts(train_set, cfg.num_classes))
    loss_cfg = LossConfig(args.aux_weight, cfg.dataset.ignore_index, args.ohem_min_kept, args.ohem_thresh, class_weight)

    torch.manual_seed(args.seed)
    net = build_model(cfg)
    init_weights(net)
    if args.load_from:
        skipped = load_initial_weights(net, args.load_from)
        if info.main and skipped:
            print(f"--load-from {args.load_from}: {len(skipped)} tensors kept their initial values, e.g. {skipped[0]}")
    if info.world > 1 and device.type == "cuda":
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device, memory_format=torch.channels_last if args.channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None

    start, best, elapsed, commands = 0, {"mIoU": None, "iter": None}, 0.0, [argv]
    resume = last_checkpoint(work_dir) if args.resume == "auto" else (Path(args.resume) if args.resume else None)
    if resume is not None:  # a bare --resume in a fresh work dir starts from scratch, as mmseg's does
        state = load_run_state(resume)
        net.load_state_dict(state["model"])
        if state["optimizer"] is not None:  # None in a portable state: SGD momentum restarts from zero
            optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        start, best, elapsed = state["iteration"], state["best"], state["elapsed_s"]
        # states written before the command history kept only their own call's argv
        commands = [*(state["commands"] if "commands" in state else [state["argv"]]), argv]

    forward = TrainForward(net)
    if info.world > 1:
        forward = DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        forward = torch.compile(forward)
    pipe = TrainPipeline.from_config(cfg)
    stream = TrainBatches(train_set, pipe, args.batch, args.seed, info.rank, info.world, device, args.workers)
    log = RunLog(work_dir, enabled=info.main)
    if info.main:
        log.write("start", start, config=cfg.name, argv=argv, world=info.world, batch=args.batch,
                  images=len(train_set), device=_device_name(device))  # fmt: skip

    def run_state(wall: float) -> dict:
        return dict(config=cfg.name, model=net.state_dict(), optimizer=optimizer.state_dict(),
                    scaler=scaler.state_dict(), ema=ema.state_dict() if ema else None, best=best, elapsed_s=wall,
                    commands=commands)  # fmt: skip

    eval_net = ema.module if ema is not None else net
    scores: dict | None = None  # the latest validation's

    def validate(done: int, wall: float) -> None:
        nonlocal scores
        metrics = evaluate(Segmenter(eval_net, device), val_set)
        net.train()
        scores = metrics.as_dict(cfg.dataset.classes)
        log.write("val", done, **{k: scores[k] for k in ("aAcc", "mIoU", "mAcc")}, per_class=scores["per_class"])
        tqdm.write(f"iter {done}: val mIoU {scores['mIoU']} aAcc {scores['aAcc']} mAcc {scores['mAcc']}")
        if best["mIoU"] is None or scores["mIoU"] > best["mIoU"]:
            best.update(mIoU=scores["mIoU"], iter=done)
            export_model(eval_net, work_dir / "best_model.pth", _provenance(cfg, args, commands, info, done, wall, scores))

    net.train()
    t_start, t_window, window_imgs = time.perf_counter(), time.perf_counter(), 0
    bar = tqdm(total=args.iters, initial=start, disable=not info.main, dynamic_ncols=True, unit="it",
               mininterval=1.0 if sys.stderr.isatty() else 60.0)  # fmt: skip
    done = start
    for it, (img, label) in zip(range(start, args.iters), stream.batches(start, args.iters)):
        lr = poly_lr(it, args.iters, args.lr, args.min_lr, args.power)
        set_lr(optimizer, lr)
        torch.manual_seed(_dropout_seed(args.seed, it, info.rank, info.world))
        if args.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        losses = train_step(forward, optimizer, scaler, img, label, loss_cfg, amp_dtype)
        if ema is not None:
            ema.update_parameters(net)
        done, window_imgs = it + 1, window_imgs + img.shape[0] * info.world
        bar.update(1)
        wall = elapsed + time.perf_counter() - t_start
        out_of_time = False
        if done % args.log_interval == 0 or done == args.iters:
            vals = dist.mean_over_ranks(torch.stack([losses[k].detach().float() for k in ("loss", "loss_decode", "loss_aux")]), info)
            now = time.perf_counter()
            loss, loss_decode, loss_aux = vals.tolist()
            window_s = now - t_window
            img_s = window_imgs / window_s
            t_window, window_imgs = now, 0
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", img_s=f"{img_s:.0f}")
            log.write("train", done, loss=loss, loss_decode=loss_decode, loss_aux=loss_aux, lr=lr, img_s=img_s, wall_s=wall)
            if not sys.stderr.isatty() and info.main:
                print(f"iter {done}/{args.iters} loss {loss:.4f} lr {lr:.2e} {img_s:.0f} img/s wall {wall:.0f}s", flush=True)
            # At log steps only, and agreed on by all ranks, so every process stops at the same step.
            out_of_time = args.max_minutes is not None and dist.any_rank(deadline.near(window_s, now), info)
        if val_set is not None and info.main and (done % args.val_interval == 0 or done == args.iters):
            validate(done, wall)
        if done == args.iters and info.main:  # the fixed schedule's model, chosen by no validation
            export_model(eval_net, work_dir / "final_model.pth", _provenance(cfg, args, commands, info, done, wall, scores))
        if done % args.ckpt_interval == 0 or done == args.iters or out_of_time:
            if info.main:
                save_run_state(work_dir, done, args.keep_ckpts, portable=args.portable_state, **run_state(wall))
            dist.barrier(info)
        if out_of_time:
            break
    bar.close()
    result = {"iteration": done, "best": best, "wall_s": elapsed + time.perf_counter() - t_start, "work_dir": str(work_dir)}
    if info.main:
        log.write("end", done, best=best, wall_s=result["wall_s"])
    log.close()
    dist.teardown(info)
    return result


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()})"


def _provenance(cfg, args, commands, info, done, wall, scores) -> dict:
    """What the model card and `net.meta` report about how these weights were made. A run resumed
    over several calls records the call that started it as its command, the others as resumes."""
    first, *resumes = ("python -m model.training.train " + shlex.join(argv) for argv in commands)
    return {
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": first,
        **({"resumed_with": resumes} if resumes else {}),
        "world_size": info.world,
        "iterations": done,
        "wall_time_s": round(wall, 1),
        "device": _device_name(info.device),
        "torch": str(torch.__version__),
        "crop_size": list(cfg.crop_size),
        "test_scale": list(cfg.test_scale),
        "val": scores,
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    result = train(parse_args(argv), argv)
    if result["best"]["mIoU"] is not None:
        print(f"best val mIoU {result['best']['mIoU']} at iteration {result['best']['iter']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
