"""Optional packages: a missing one is a one-line error that says what to install, not a traceback.

`onnx`, `onnxscript` and `onnxruntime` come with the `[onnx]` extra, which the serving install
does not need; the export CLIs and the ONNX Runtime session check for them before doing any work.
"""

from __future__ import annotations

import importlib

ONNX_EXTRA = "pip install 'deeplab-serve[onnx]'"


class MissingDependency(ImportError):
    """An optional package a feature needs cannot be imported; the message names the install."""


def require(purpose: str, *modules: str, install: str = ONNX_EXTRA) -> None:
    """Import each of `modules`; if any fails, raise `MissingDependency` naming all that failed."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        quoted = [f"'{name}'" for name in missing]
        names = " and ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        plural = "s" if len(missing) > 1 else ""
        raise MissingDependency(f"{purpose} needs the {names} package{plural}: {install}")
