"""Backend registry and selection: ``--backend`` wins, else the model file's extension decides.

Each backend class declares its name, the file extensions it serves and the options it accepts;
the registry and the settings' choices are derived from these classes. The engine packages
themselves (onnxruntime, tensorrt) are imported only when a backend loads, so an image built for
one engine never needs the others installed.
"""

from __future__ import annotations

from pathlib import Path

from service.backends.base import AUTO, Backend
from service.backends.onnxruntime import OnnxRuntimeBackend
from service.backends.pytorch import TorchBackend
from service.backends.replicas import Replicas, expand_devices
from service.backends.tensorrt import TensorRTBackend

BACKENDS: dict[str, type[Backend]] = {cls.name: cls for cls in (TorchBackend, OnnxRuntimeBackend, TensorRTBackend)}
#: for config names, the built-in model and unknown suffixes
DEFAULT_BACKEND = TorchBackend.name

_BY_EXTENSION = {ext: cls.name for cls in BACKENDS.values() for ext in cls.extensions}


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_backend_name(model: str | None, backend: str = AUTO) -> str:
    """``backend`` unless it is ``auto``; then from the model's file extension (config names and
    the built-in default model -> torch)."""
    if backend != AUTO:
        return backend
    if model is None:
        return DEFAULT_BACKEND
    return _BY_EXTENSION.get(Path(model).suffix.lower(), DEFAULT_BACKEND)


def create_backend(
    model: str | None, backend: str = AUTO, device: str = "cpu", precision: str = AUTO, **options
) -> Backend:
    """The backend for ``model``; of ``options`` each backend takes those it declares. ``device``
    ``cuda`` with several GPUs visible, or a list like ``cuda:0,cuda:1``: one replica per device
    behind one batcher (``replicas``)."""
    name = resolve_backend_name(model, backend)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    cls = BACKENDS[name]
    for option, what in (("tta", "tta (test-time augmentation)"), ("test_scale", "test_scale (its model's input size is fixed at export)")):
        if options.get(option) and option not in cls.options:
            raise ValueError(f"the {name} backend does not offer {what}: serve a checkpoint with torch")
    accepted = {key: value for key, value in options.items() if key in cls.options}
    devices = expand_devices(device, visible_gpus() if device == "cuda" else 0)
    replicas = [cls(model, device=d, precision=precision, **accepted) for d in devices]
    return replicas[0] if len(replicas) == 1 else Replicas(replicas)


def visible_gpus() -> int:
    """How many CUDA GPUs this process sees."""
    import torch

    return torch.cuda.device_count()
