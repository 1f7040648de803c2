"""Backend registry and selection: ``--backend`` wins, else the model file's extension decides.

Backend classes are imported lazily by dotted path so that an image built for one engine
(e.g. TensorRT only) never needs the others' packages installed.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from service.backends.base import Backend

BACKENDS = {
    "torch": "service.backends.pytorch:TorchBackend",
    "onnxruntime": "service.backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "service.backends.tensorrt:TensorRTBackend",
}

_BY_EXTENSION = {
    ".pth": "torch",
    ".pt": "torch",
    ".safetensors": "torch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``; torch is imported lazily (ORT/TRT images)."""
    try:
        import torch
    except ImportError:
        return "cpu"
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend_name(model: str | None, backend: str = "auto") -> str:
    """``backend`` unless it is ``auto``; then from the model's file extension (config names and
    the built-in default model -> torch)."""
    if backend != "auto":
        return backend
    if model is None:
        return "torch"
    suffix = Path(model).suffix.lower()
    return _BY_EXTENSION.get(suffix, "torch")


def create_backend(
    model: str | None, backend: str, device: str, precision: str, cuda_graphs: bool = True
) -> Backend:
    """The backend for ``model``; ``cuda_graphs`` is the torch backend's option."""
    name = resolve_backend_name(model, backend)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    module_name, class_name = BACKENDS[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(f"backend {name!r} is not available here: {exc}") from exc
    options = {"cuda_graphs": cuda_graphs} if name == "torch" else {}
    return getattr(module, class_name)(model, device=device, precision=precision, **options)
