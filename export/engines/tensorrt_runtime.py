"""Run a serialized TensorRT engine on torch CUDA tensors (TensorRT 10 named-tensor API).

Shared by `build_engine.py --verify` and the service's TensorRT backend. Buffers are torch tensors,
so no cuda-python/pycuda dependency: TensorRT gets their `data_ptr()` via `set_tensor_address`,
and the work runs on a dedicated torch stream handed to `execute_async_v3`. Batches larger than the
profile's maximum are split into chunks the engine accepts. Never executed: no TensorRT wheel is
reachable from this project's machines or CI, so its tests skip.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .metadata import read_sidecar
from .profile import ShapeProfile
from .tensorrt_import import import_tensorrt


class EngineRunError(RuntimeError):
    """The engine could not be loaded or refused an input."""


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.DataType.FLOAT: torch.float32,
        trt.DataType.HALF: torch.float16,
        trt.DataType.BF16: torch.bfloat16,
        trt.DataType.INT32: torch.int32,
        trt.DataType.INT64: torch.int64,
        trt.DataType.UINT8: torch.uint8,
        trt.DataType.BOOL: torch.bool,
    }
    if dtype not in table:
        raise EngineRunError(f"engine tensor type {dtype} has no torch equivalent here")
    return table[dtype]


class EngineRunner:
    """One engine, one execution context, one stream: `run(x)` is not thread-safe by design
    (the service calls its backend from a single inference thread)."""

    def __init__(self, engine_path: str | Path, device: str = "cuda"):
        trt = import_tensorrt()
        self.meta, self.build = read_sidecar(engine_path)
        self.profile = ShapeProfile.from_json(self.build["profile"])
        self.device = torch.device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self._runtime = trt.Runtime(self._logger)
            self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
            if self.engine is None:
                raise EngineRunError(f"TensorRT could not deserialize {engine_path} (built by another version or GPU?)")
            self.context = self.engine.create_execution_context()
            self.stream = torch.cuda.Stream(self.device)
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        modes = {n: self.engine.get_tensor_mode(n) for n in names}
        inputs = [n for n in names if modes[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if modes[n] == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise EngineRunError(f"expected one input and one output, engine has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.input_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.output_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))

    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        if not self.context.set_input_shape(self.input_name, tuple(x.shape)):
            raise EngineRunError(f"input shape {tuple(x.shape)} is outside the engine's profile {self.profile}")
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=self.output_dtype, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise EngineRunError("execute_async_v3 failed; see TensorRT's log")
        return out

    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised N x 3 x H x W (any float dtype, on this device) -> the engine's output,
        on this device and ready on the caller's current stream."""
        if not self.profile.accepts_hw(tuple(x.shape[2:])):
            raise EngineRunError(
                f"image size {tuple(x.shape[2:])} is outside the engine's range {self.profile.min_hw}..{self.profile.max_hw}"
            )
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)
        with torch.cuda.stream(self.stream):
            x = x.to(self.input_dtype).contiguous()
            chunks = [self._run_chunk(c.contiguous()) for c in x.split(self.profile.max_batch)]
            out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
        caller.wait_stream(self.stream)
        x.record_stream(self.stream)
        out.record_stream(caller)
        return out
