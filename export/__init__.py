"""Deployment artefacts from a DeepLabV3+ model: checked ONNX graphs and TensorRT engines.

`python -m export.onnx_export` writes an ONNX file carrying its own metadata; `python -m
export.build_engine` turns one into a TensorRT engine plus JSON sidecar. The service's ONNX Runtime and TensorRT
backends read both through `export.engines.metadata`, `export.engines.ort_session` and `export.engines.tensorrt_runtime`.
Submodules import `torch.onnx`, `onnx` or `tensorrt` only when used, so importing `export` is cheap.
The TensorRT build and runner have never been executed (no TensorRT wheel is reachable here); the
ONNX side and the `trtexec` fallback are what the tests cover.
"""
