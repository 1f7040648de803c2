"""The package version, for ``--version`` and the OpenAPI document.

The installed distribution's metadata is the truth; a source checkout that was never installed
falls back to pyproject.toml, so the two cannot disagree.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

DISTRIBUTION = "deeplab-serve"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def package_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return tomllib.loads(PYPROJECT.read_text())["project"]["version"]
