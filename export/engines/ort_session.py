"""ONNX Runtime sessions for our exported graphs, shared by the export check and the service.

Provider choice lives here once: TensorRT, then CUDA, then CPU where the installed onnxruntime has
them and the caller asked for a GPU; plain `onnxruntime` (CPU only) everywhere else.
`onnxruntime` is imported on use, so TensorRT-only images need not ship it, and where it is
missing the caller gets one line naming the install (`MissingDependency`), not a traceback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .dependencies import require
from .metadata import LABELS

_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def _onnxruntime():
    require("running an ONNX graph", "onnxruntime")
    import onnxruntime

    return onnxruntime


def providers_for(device: str) -> list[str]:
    """Providers for "cpu" or "cuda[:N]", best first, restricted to those actually installed."""
    available = _onnxruntime().get_available_providers()
    wanted = [*_GPU_PROVIDERS, "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    return [p for p in wanted if p in available]


def create_session(model: str | Path | bytes, device: str = "cpu", threads: int | None = None):
    """An `InferenceSession` on `device`; `threads` caps intra-op threads (None = ORT's default)."""
    ort = _onnxruntime()

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    provider_options = None
    if device.startswith("cuda") and ":" in device:
        index = device.split(":", 1)[1]
        provider_options = [{"device_id": index} if p != "CPUExecutionProvider" else {} for p in providers_for(device)]
    return ort.InferenceSession(
        source, sess_options=options, providers=providers_for(device), provider_options=provider_options
    )


def labels_of(output: np.ndarray, kind: str) -> np.ndarray:
    """uint8 N x H x W labels from a graph's first output, whether it ends in labels or logits."""
    labels = output if kind == LABELS else output.argmax(1)
    return labels.astype(np.uint8)
