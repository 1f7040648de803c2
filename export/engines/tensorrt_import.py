"""Import the TensorRT Python bindings, accepting only the major version this code is written for.

Shared by the engine builder (`export.tensorrt_build`) and the runner (`export.engines.tensorrt_runtime`).
Only TensorRT 10 is accepted: 9 and older lack the named-tensor API used here, and 11 removed
weakly typed networks, so `BuilderFlag.FP16` (how the FP16 build asks for half-precision kernels)
no longer exists; supporting 11 needs a strongly typed network built from an fp16 ONNX graph.
None of this has ever run against a real TensorRT (see export/README.md).
"""

from __future__ import annotations

SUPPORTED_MAJORS = (10,)
INSTALL = "pip install 'tensorrt>=10,<11'"


class TensorRTUnavailable(RuntimeError):
    """`tensorrt` cannot be used here: see the two subclasses."""


class TensorRTMissing(TensorRTUnavailable):
    """`tensorrt` cannot be imported."""


class UnsupportedTensorRT(TensorRTUnavailable):
    """`tensorrt` imports, but its major version is not one this code supports."""


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise TensorRTMissing(f"the TensorRT Python bindings (`tensorrt`) are not installed ({exc}): {INSTALL}") from exc
    found = str(getattr(trt, "__version__", "")) or "of unknown version"
    major = found.split(".")[0]
    if not major.isdigit() or int(major) not in SUPPORTED_MAJORS:
        raise UnsupportedTensorRT(
            f"TensorRT {found} found; this code supports TensorRT "
            f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)} only: {INSTALL}"
        )
    return trt
