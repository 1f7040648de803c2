"""PyTorch backend (CPU and CUDA): the reference engine, and the default for .pth/config names.

Speed choices, each cheap and safe for a conv net in eval mode: the weights are cast once to the
precision (``auto``: fp16 on CUDA, where it halves memory traffic on tensor cores; on a CPU bf16
where it has bf16 instructions (``cpu_has_native_bf16``: 1.9x fp32 for the built-in model, labels
99.92% the same, bench/RESULTS.md), else fp32; fp8 is fp16 with the largest conv in e4m3, Hopper
GPUs only), activations use channels_last (what cuDNN's fastest conv kernels want),
cudnn.benchmark picks kernels per input shape (our shapes are a few fixed buckets, warmed up at
start), and the upload is uint8 with
normalisation and argmax on the device, so only 1 byte per pixel crosses PCIe each way.
On CUDA the network is first rewritten by `model.accel.fast.optimize_for_inference` (BN folded, fused
conv + bias + residual + ReLU, Triton depthwise and resize kernels) and whole-image inference
ends in the fused upsample + argmax kernel, which never writes full-resolution logits. With
`cuda_graphs` (the default on CUDA) every warmed-up batch shape is captured once and replayed, a
batch between two warmed sizes padded into the larger, and an image shape first seen while serving
captured then (`model.accel.cuda_graphs`); each image is uploaded by `stage` as soon as it is decoded,
and two batches may be in flight. (`torch.compile` is not offered: its dynamic-shape graphs break
on the Triton kernels' float arguments, for little gain: bench/RESULTS.md.)
"""

from __future__ import annotations

import functools
import gc
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from model import DEFAULT_MODEL, load_model
from model.configs import with_test_scale
from model.accel import fp8
from model.accel.cuda_graphs import MAX_PADDING, ShapeGraphs
from model.accel.fast import (
    normalizer,
    optimize_for_inference,
    tta_labels,
    use_fp8,
    whole_image_labels,
)
from model.checkpoint import DEFAULT_WEIGHTS
from model.pipeline.inference import TTA_RATIOS, slide_logits
from model.precision import Precision
from service.backends.base import AUTO, Backend
from service.backends.provenance import weights_provenance

_ALWAYS = (Precision.FP32, Precision.FP16, Precision.BF16)


@functools.cache
def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this x86 CPU computes bf16 natively (AVX512-BF16 or AMX), where bf16 convolutions
    were measured 1.9x fp32; without those instructions oneDNN can only emulate bf16, which was not
    measured, so auto stays fp32 there (ARM CPUs with bf16 too: fp32 unless asked)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


class TorchBackend(Backend):
    name = "torch"
    extensions = (".pth", ".pt", ".safetensors")
    options = ("cuda_graphs", "tta", "test_scale")

    def __init__(
        self, model=None, device="cpu", precision=AUTO, net: torch.nn.Module | None = None,
        cuda_graphs: bool = True, tta: bool = False, test_scale: str | None = None,
    ):  # fmt: skip
        """``net``: an already built network to serve instead of loading ``model``; ``tta``:
        multi-scale + flip test-time augmentation (``model.pipeline.inference.TTA_RATIOS``);
        ``test_scale``: "WxH", the box images are resized into instead of the model's own."""
        super().__init__(model, device, precision)
        self.net = net
        self.cuda_graphs = cuda_graphs
        self.tta = tta
        self.test_scale = test_scale
        self._graphs: ShapeGraphs | None = None
        self._batch_sizes: set[int] = set()  # warmed up: the sizes new shapes are captured at

    def _resolve_precision(self) -> Precision:
        on_cuda = self._device.type == "cuda"
        supported = _ALWAYS + ((Precision.FP8,) if fp8.supported(self._device) else ())
        note = "" if Precision.FP8 in supported else " (fp8 needs a Hopper or newer GPU, sm90+, and Triton)"
        best = Precision.FP16 if on_cuda else Precision.BF16 if cpu_has_native_bf16() else Precision.FP32
        return self.resolve_precision(supported, best, note)

    def _weights_file(self):
        """The checkpoint file being served, for provenance (an injected net has none; a zoo config
        name is no local file and gets none either)."""
        if self.net is not None:
            return None
        return DEFAULT_WEIGHTS if self.model in (None, DEFAULT_MODEL) else self.model

    def load(self):
        self._device = torch.device(self.device)
        self.precision = self._resolve_precision()
        self._dtype = self.precision.dtype
        weights_file = self._weights_file()
        if self.net is None:
            self.net = load_model(self.model, device=str(self._device))
        if self.test_scale:
            self.net.config = with_test_scale(self.net.config, self.test_scale)
        self.config = self.net.config
        if self.tta and self.config.inference != "whole":
            raise ValueError(f"tta is offered for whole-image configs; {self.config.name} runs sliding windows")
        self.provenance = weights_provenance(weights_file, getattr(self.net, "meta", {}))
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.net = optimize_for_inference(self.net.to(self._device))
        self.net = self.net.to(self._device, self._dtype, memory_format=torch.channels_last).eval()
        if self.precision is Precision.FP8:
            self.net = use_fp8(self.net)
        self._normalize = normalizer(self.config, self._device, self._dtype, self.net.input_channels)
        if self._device.type == "cuda" and self.cuda_graphs and self.config.inference == "whole":
            self._graphs = ShapeGraphs(self._pixels_to_labels, self._device, self._capture_size)
            self.concurrent_batches = 2
        return self.config

    def _pixels_to_labels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 on the device -> uint8 N x H x W labels on the device."""
        x = self._normalize(pixels)  # in the weights' dtype, channels-last
        cfg = self.config
        if cfg.inference == "slide":
            return slide_logits(self.net, x, cfg.slide_crop, cfg.slide_stride).argmax(dim=1).to(torch.uint8)
        if self.tta:
            return tta_labels(self.net, x, TTA_RATIOS)
        return whole_image_labels(self.net, x)

    def warm_up(self, shapes: Iterable[tuple[int, int, int]], tune: bool = True) -> None:
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark and tune
        try:
            if self._graphs is None:
                return super().warm_up(shapes)
            for n, height, width in shapes:
                self._graphs.capture((n, height, width, 3), torch.uint8)
                self._batch_sizes.add(n)
        finally:
            torch.backends.cudnn.benchmark = benchmark

    def _capture_size(self, n: int) -> int:
        """An image shape first seen while serving is captured at the warmed batch size that fits n
        (the ladder of the main shapes), so it too gets a few graphs, not one per batch size."""
        return min((b for b in self._batch_sizes if n <= b <= n * MAX_PADDING), default=n)

    def stage(self, pixels: np.ndarray):
        return pixels if self._graphs is None else self._graphs.stage(pixels)

    def infer_images(self, staged: Sequence) -> np.ndarray:
        if self._graphs is None:
            return super().infer_images(staged)
        return self._graphs(staged).numpy()

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        if self._graphs is not None:
            return self.infer_images([self.stage(pixels) for pixels in batch])
        x = torch.from_numpy(batch)
        if self._device.type == "cuda":
            x = x.pin_memory()
        return self._pixels_to_labels(x.to(self._device, non_blocking=True)).cpu().numpy()

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.net.parameters(), *self.net.buffers()))

    def close(self) -> None:
        """Release the weights and the CUDA graphs' pool back to the device."""
        self.net, self._graphs = None, None
        gc.collect()
        if self._device.type == "cuda":
            torch.cuda.empty_cache()

    def describe(self) -> dict:
        return {
            "torch": torch.__version__,
            "cuda_graphs": None if self._graphs is None else len(self._graphs.shapes),
            "tta": list(TTA_RATIOS) if self.tta else None,
        }
