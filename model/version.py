"""The package version, for every `--version` (and anything else that reports it).

The installed distribution's metadata is the truth; a source checkout that was never installed
falls back to the `pyproject.toml` beside the packages, so the two cannot disagree.
"""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

DISTRIBUTION = "deeplab-serve"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"]
