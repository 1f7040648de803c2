"""ONNX Runtime backend for `.onnx` files written by `python -m export.onnx_export`.

The file's own metadata (config, classes, palette, normalisation, logits vs labels output) makes
it self-describing, so no checkpoint is needed. Normalisation reuses `model.pipeline.normalize.normalize`
so the graph sees exactly the torch backend's input. Providers: TensorRT, CUDA, then CPU where
installed and a GPU device was asked for (see `export.engines.ort_session`). The graph computes in
the fp32 it was exported in, so that is the only precision this backend offers.
"""

from __future__ import annotations

import numpy as np
import torch

from export.engines.metadata import read_onnx
from export.engines.ort_session import create_session, labels_of
from model.pipeline.normalize import normalize
from model.precision import Precision
from service.backends.base import Backend
from service.backends.provenance import weights_provenance


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    extensions = (".onnx",)

    def load(self):
        if self.model is None or not str(self.model).endswith(".onnx"):
            raise ValueError(f"the onnxruntime backend serves .onnx files, got {self.model!r}")
        fp32 = (Precision.FP32,)
        self.precision = self.resolve_precision(fp32, Precision.FP32, "; build a TensorRT engine for fp16")
        self.meta = read_onnx(self.model)
        self.config = self.meta.model_config()
        self.provenance = weights_provenance(self.model, self.meta.provenance)
        self.session = create_session(self.model, self.device)
        graph_input = self.session.get_inputs()[0]
        self._input = graph_input.name
        # A graph exported with --batch N takes exactly N images: run in chunks of N, pad the last.
        self._fixed_batch = graph_input.shape[0] if isinstance(graph_input.shape[0], int) else None
        return self.config

    def _run(self, x: np.ndarray) -> np.ndarray:
        return labels_of(self.session.run(None, {self._input: x})[0], self.meta.output)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = normalize(torch.from_numpy(batch), self.config).numpy()
        size = self._fixed_batch
        if size is None:
            return self._run(x)
        chunks = []
        for start in range(0, len(x), size):
            chunk = x[start : start + size]
            padded = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            chunks.append(self._run(padded)[: len(chunk)])
        return np.concatenate(chunks)

    def describe(self) -> dict:
        import onnxruntime

        return {
            "onnxruntime": onnxruntime.__version__,
            "providers": self.session.get_providers(),
            "output": self.meta.output,
        }
