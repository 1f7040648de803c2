"""Shared fixtures: CamVid sample location and random-but-realistic weights."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))

REPO = Path(__file__).resolve().parent.parent
CAMVID = Path(os.environ.get("CAMVID_DIR", REPO.parent / "shared" / "data" / "camvid"))


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (set CAMVID_DIR)")
    return CAMVID


def randomize(state_dict: dict, seed: int = 0) -> dict:
    """Random weights AND random BN statistics, so a wrong layer order or eps cannot hide."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=g) * 0.2
        else:
            fan_in = v[0].numel() if v.dim() > 1 else 1
            out[k] = torch.randn(v.shape, generator=g) / fan_in**0.5 if v.dim() > 1 else torch.randn(v.shape, generator=g) * 0.2 + (1.0 if k.endswith("weight") else 0.0)
    return out
