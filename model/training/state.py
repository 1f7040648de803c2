"""The training run's resumable state: weights, optimizer, AMP scaler, EMA, iteration, best score.

Data order and augmentation are functions of (seed, iteration) (see `model.training.data.sampling`) and
dropout is reseeded every iteration, so these tensors are all a resumed run needs to continue
bit-identically. As mmseg's CheckpointHook: WORK_DIR/iter_K.pth, the newest `keep` of them kept,
and WORK_DIR/last_checkpoint naming the newest. Files are written to a temporary name and
renamed, so a job killed mid-write leaves the previous checkpoint intact; they hold only tensors
and plain values (`torch.load(weights_only=True)` reads them).

`portable_state` is the same run at a quarter of the size, for moving a run between machines
whose transfer limits the full state exceeds (e.g. a lent GPU that is released between calls).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..checkpoint import half_floats

STATE_FORMAT = "deeplab-serve-train/1"
PORTABLE_STATE = "portable_state.pth"


def save_state(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def portable_state(state: dict) -> dict:
    """The run state with fp16 weights and no optimizer state, a quarter of the full state's size.

    Resuming from it is close to, not bit-identical with, the uninterrupted run: each weight moves by
    at most 2**-11 of itself, and SGD's momentum restarts from zero (at momentum 0.9, 88% rebuilt
    after 20 iterations).
    """
    return {**state, "model": half_floats(state["model"]), "optimizer": None, "ema": state["ema"] and half_floats(state["ema"])}


def save_run_state(work_dir: Path, iteration: int, keep: int, portable: bool = False, **state) -> Path:
    """WORK_DIR/iter_K.pth (and, if `portable`, WORK_DIR/portable_state.pth of the same iteration)."""
    path = work_dir / f"iter_{iteration}.pth"
    save_state(path, iteration=iteration, **state)
    if portable:
        save_state(work_dir / PORTABLE_STATE, iteration=iteration, **portable_state(state))
    pointer = work_dir / "last_checkpoint"
    pointer.with_name("last_checkpoint.tmp").write_text(path.name)
    os.replace(pointer.with_name("last_checkpoint.tmp"), pointer)
    old = sorted(work_dir.glob("iter_*.pth"), key=lambda p: int(p.stem.split("_")[1]))[:-keep]
    for stale in old:
        stale.unlink()
    return path


def last_checkpoint(work_dir: Path) -> Path | None:
    pointer = work_dir / "last_checkpoint"
    return work_dir / pointer.read_text().strip() if pointer.exists() else None


def load_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this project (format {STATE_FORMAT})")
    return state
