"""Read a PyTorch checkpoint without ever running code from it.

`torch.load(weights_only=True)` refuses any pickled global outside tensors and plain containers.
mmengine-era checkpoints also pickle bookkeeping objects (`message_hub` history buffers, numpy
scalars) that we never use; those named globals from known-benign packages are replaced by inert
placeholders that record nothing and run nothing, so the weights still load. Any other global
(`os.system`, `builtins.eval`, ...) makes the load fail with `UnsafeCheckpointError`.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

BENIGN_PACKAGES = ("numpy", "mmengine", "mmcv", "mmseg", "_codecs")
# numpy 2 pickles dtypes through `getattr`; it too only ever gets a placeholder, never the builtin.
BENIGN_GLOBALS = ("builtins.getattr",)
_UNSUPPORTED = re.compile(r"(?:Unsupported global: |unsupported )GLOBAL ([\w.]+)")
_UNPICKLER_REASON = re.compile(r"WeightsUnpickler error:(.*?)(?:Check the documentation of torch\.load|$)", re.S)
_MAX_PLACEHOLDERS = 64


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint for the requested model."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that references code outside the allowed, inert set."""


class _Placeholder:
    """Stands in for a pickled object we do not need; accepts any construction and state."""

    def __init__(self, *args, **kwargs):
        pass

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        pass

    def __reduce__(self):
        raise TypeError("placeholder objects are not picklable")


def _placeholder_for(qualified_name: str) -> type:
    return type(qualified_name.rsplit(".", 1)[-1], (_Placeholder,), {})


def read_checkpoint(path: str | Path) -> object:
    """The unpickled object of a checkpoint file, loaded with `weights_only=True`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    placeholders: list[tuple[type, str]] = []
    for _ in range(_MAX_PLACEHOLDERS):
        try:
            with torch.serialization.safe_globals(placeholders):
                return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            name = _unsupported_global(exc)
            if name is not None and "." not in name:
                name = "builtins." + name  # torch names builtins without their module
            if name is None:
                raise CheckpointError(f"{path} is not a readable checkpoint: {torch_refusal_reason(exc)}") from None
            if name.split(".")[0] not in BENIGN_PACKAGES and name not in BENIGN_GLOBALS:
                raise UnsafeCheckpointError(
                    f"refusing to load {path}: it references {name}, which could run code when unpickled"
                ) from None
            placeholders.append((_placeholder_for(name), name))
        except Exception as exc:  # a corrupt stream fails in many ways (KeyError, EOFError, ...)
            raise CheckpointError(f"{path} is not a readable checkpoint (truncated or not a PyTorch file): {torch_refusal_reason(exc)}") from None
    raise UnsafeCheckpointError(f"refusing to load {path}: too many non-tensor objects")


def torch_refusal_reason(exc: Exception) -> str:
    """torch's refusal without its advice to re-run with ``weights_only=False``: that would run
    whatever code the file carries, the very thing this module exists to prevent."""
    text = str(exc)
    if m := _UNPICKLER_REASON.search(text):
        return " ".join(m.group(1).split())
    sentences = re.split(r"(?<=\.)\s+", text)
    return " ".join(s for s in sentences if "weights_only" not in s).strip()


def _unsupported_global(exc: Exception) -> str | None:
    m = _UNSUPPORTED.search(str(exc))
    return m.group(1) if m else None
