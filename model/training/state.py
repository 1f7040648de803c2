"""The training run's resumable state: weights, optimizer, AMP scaler, EMA, iteration, best score.

Data order and augmentation are functions of (seed, iteration) (see `model.data.sampling`) and
dropout is reseeded every iteration, so these tensors are all a resumed run needs to continue
bit-identically. Files are written to a temporary name and renamed, so a job killed mid-write
leaves the previous checkpoint intact; they hold only tensors and plain values
(`torch.load(weights_only=True)` reads them).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

STATE_FORMAT = "deeplab-serve-train/1"


def save_state(path: Path, **state) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": STATE_FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training checkpoint of this project (format {STATE_FORMAT})")
    return state
