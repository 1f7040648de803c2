"""What /v1/models may say about where the served weights came from.

Checkpoint meta is free-form: a training run stores its recipe, its command line and the data and
work-dir paths of the machine that trained it, and exports copy that meta verbatim. Publishing it
would leak those paths to every client, so only an allow-list of facts is reported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_provenance(file: str | Path | None, meta: dict) -> dict:
    """The served file's name and sha256 (when it is a local file) and the validation scores,
    training length and training split the checkpoint records; nothing else from ``meta``. The split
    says what the scores mean: ``train+val`` (the built-in model) scored val on its training data."""
    out: dict = {}
    if file is not None and Path(file).is_file():
        out["file"] = Path(file).name
        out["sha256"] = sha256_of(Path(file))
    val = meta.get("val")
    if isinstance(val, dict):
        out.update({f"val_{key.lower()}": val[key] for key in ("mIoU", "aAcc", "mAcc") if isinstance(val.get(key), (int, float))})
    if isinstance(meta.get("iterations"), int):
        out["iterations"] = meta["iterations"]
    recipe = meta.get("recipe")
    if isinstance(recipe, dict) and isinstance(recipe.get("train_split"), str):
        out["train_split"] = recipe["train_split"]
    return out
