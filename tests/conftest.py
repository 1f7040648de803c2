"""Shared fixtures (helpers live in `helpers.py`): the CamVid sample location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from helpers import CAMVID  # noqa: E402 (after the path insert above)


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (set CAMVID_DIR)")
    return CAMVID
