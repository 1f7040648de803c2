"""Import the TensorRT Python bindings, refusing versions this code was not written for.

Shared by the engine builder (`export.tensorrt_build`) and the runner (`export.engines.tensorrt_runtime`).
"""

from __future__ import annotations

NOT_INSTALLED = "the TensorRT Python bindings (`tensorrt`, version 10) are not installed"


class TensorRTUnavailable(RuntimeError):
    """`tensorrt` cannot be imported here, or is older than 10."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTUnavailable(f"{NOT_INSTALLED} ({exc})") from exc
    if int(trt.__version__.split(".")[0]) < 10:
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} found; this code uses the TensorRT 10 API")
    return trt
