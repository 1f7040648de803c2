"""TensorRT backend for `.engine`/`.plan` files built by `export/build_engine.py`.

The engine's JSON sidecar supplies the config, classes, palette and optimization profile. Only
uint8 pixels are uploaded (pinned, asynchronous); normalisation runs on the GPU and, when the
engine ends in argmax, only uint8 labels come back. Execution itself (named tensors,
`set_input_shape`, `execute_async_v3` on a dedicated stream, splitting batches above the
profile's maximum) is `export.engines.tensorrt_runtime.EngineRunner`. The engine's precision was fixed
at build time and is read from the sidecar: ``auto`` or that precision is served, any other is
refused (rebuild the engine instead).
"""

from __future__ import annotations

import numpy as np
import torch

from export.engines.metadata import LABELS
from export.engines.tensorrt_runtime import EngineRunner
from model.pipeline.normalize import normalize
from model.precision import Precision, UnsupportedPrecision
from service.backends.base import Backend
from service.backends.provenance import weights_provenance


class TensorRTBackend(Backend):
    name = "tensorrt"
    extensions = (".engine", ".plan")

    def load(self):
        if self.model is None:
            raise ValueError("the tensorrt backend needs an engine file (.engine/.plan)")
        if not str(self.device).startswith("cuda"):
            raise ValueError(f"TensorRT engines run on CUDA devices only, not {self.device!r}; set DEEPLAB_DEVICE=cuda")
        self.runner = EngineRunner(self.model, self.device)
        built = self.runner.build.get("precision")
        if built is None:
            raise UnsupportedPrecision(f"the sidecar of {self.model} does not record the engine's precision; rebuild it")
        built = Precision.parse(built)
        self.precision = self.resolve_precision((built,), built, "; it was built in that precision: rebuild it for another")
        self.config = self.runner.meta.model_config()
        self.provenance = weights_provenance(self.model, self.runner.meta.provenance)
        return self.config

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).pin_memory().to(self.runner.device, non_blocking=True)
        out = self.runner.run(normalize(x, self.config))
        labels = out if self.runner.meta.output == LABELS else out.argmax(1)
        return labels.to(torch.uint8).cpu().numpy()

    def describe(self) -> dict:
        import tensorrt

        return {
            "tensorrt": tensorrt.__version__,
            "profile": self.runner.profile.to_json(),
            "output": self.runner.meta.output,
        }
