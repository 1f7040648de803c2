"""Shared fixtures (helpers live in `helpers.py`): the CamVid sample location."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
# Servers the tests start (in process or as `python -m service`) serve no gRPC unless a test asks:
# the default port 8001 is one fixed port, which two servers at once would contend for.
os.environ.setdefault("DEEPLAB_GRPC_PORT", "0")

from helpers import CAMVID  # noqa: E402 (after the path insert above)


@pytest.fixture(scope="session")
def camvid_dir() -> Path:
    if not (CAMVID / "images" / "val").is_dir():
        pytest.skip(f"CamVid sample not found at {CAMVID} (set CAMVID_DIR)")
    return CAMVID
