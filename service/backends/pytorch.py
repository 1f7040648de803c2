"""PyTorch backend (CPU and CUDA): the reference engine, and the default for .pth/config names.

Speed choices, each cheap and safe for a conv net in eval mode: the weights are cast once to the
requested precision (fp16/bf16 halve memory traffic on tensor-core GPUs; fp8 is fp16 with the
largest conv in e4m3 on Hopper GPUs), activations use
channels_last (what cuDNN's fastest conv kernels want), cudnn.benchmark picks kernels per input
shape (our shapes are a few fixed buckets, warmed up at start), and the upload is uint8 with
normalisation and argmax on the device, so only 1 byte per pixel crosses PCIe each way.
On CUDA the network is first rewritten by `model.accel.fast.optimize_for_inference` (BN folded, fused
conv + bias + residual + ReLU, Triton depthwise and resize kernels) and whole-image inference
ends in the fused upsample + argmax kernel, which never writes full-resolution logits. With
`cuda_graphs` (the default on CUDA) every warmed-up batch shape is captured once and replayed
(`model.accel.cuda_graphs`), each image is uploaded by `stage` as soon as it is decoded,
and two batches may be in flight. (`torch.compile` of the rewritten network measured at most 4%
faster, for R-18 only, before CUDA graphs, and its dynamic-shape graphs break on the Triton
kernels' float arguments, so it is not offered.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from model import load_model
from model.accel import fp8
from model.accel.fast import normalizer, optimize_for_inference, use_fp8, whole_image_labels
from model.pipeline.inference import slide_logits
from service.backends.base import Backend
from model.accel.cuda_graphs import ShapeGraphs

# fp8: fp16 activations, and the ASPP's bottleneck conv in e4m3 (`model.accel.fast.use_fp8`)
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "fp8": torch.float16}


class TorchBackend(Backend):
    name = "torch"

    def __init__(
        self, model=None, device="cpu", precision="fp32", net: torch.nn.Module | None = None,
        cuda_graphs: bool = True,
    ):  # fmt: skip
        """``net``: an already built network to serve instead of loading ``model``."""
        super().__init__(model, device, precision)
        self.net = net
        self.cuda_graphs = cuda_graphs
        self._graphs: ShapeGraphs | None = None

    def load(self):
        self._device = torch.device(self.device)
        self._dtype = _DTYPES[self.precision]
        if self.precision == "fp8" and not fp8.supported(self._device):
            raise ValueError(f"precision fp8 needs a Hopper or newer GPU (sm90+) and Triton; {self.device} has none")
        if self.net is None:
            self.net = load_model(self.model, device=str(self._device))
        self.config = self.net.config
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.net = optimize_for_inference(self.net.to(self._device))
        self.net = self.net.to(self._device, self._dtype, memory_format=torch.channels_last).eval()
        if self.precision == "fp8":
            self.net = use_fp8(self.net)
        self._normalize = normalizer(self.config, self._device, self._dtype, self.net.input_channels)
        if self._device.type == "cuda" and self.cuda_graphs and self.config.inference == "whole":
            self._graphs = ShapeGraphs(self._pixels_to_labels, self._device)
            self.concurrent_batches = 2
        return self.config

    def _pixels_to_labels(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 N x H x W x 3 on the device -> uint8 N x H x W labels on the device."""
        x = self._normalize(pixels)  # in the weights' dtype, channels-last
        cfg = self.config
        if cfg.inference == "slide":
            return slide_logits(self.net, x, cfg.slide_crop, cfg.slide_stride).argmax(dim=1).to(torch.uint8)
        return whole_image_labels(self.net, x)

    def warm_up(self, shapes: Iterable[tuple[int, int, int]], tune: bool = True) -> None:
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = benchmark and tune
        try:
            if self._graphs is None:
                return super().warm_up(shapes)
            for n, height, width in shapes:
                self._graphs.capture((n, height, width, 3), torch.uint8)
        finally:
            torch.backends.cudnn.benchmark = benchmark

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

    def describe(self) -> dict:
        return {
            "torch": torch.__version__,
            "cuda_graphs": None if self._graphs is None else len(self._graphs.shapes),
            "meta": getattr(self.net, "meta", {}),
        }
