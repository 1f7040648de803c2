"""PyTorch backend (CPU and CUDA): the reference engine, and the default for .pth/config names.

Speed choices, each cheap and safe for a conv net in eval mode: the weights are cast once to the
requested precision (fp16/bf16 halve memory traffic on tensor-core GPUs), activations use
channels_last (what cuDNN's fastest conv kernels want), cudnn.benchmark picks kernels per input
shape (our shapes are a few fixed buckets, warmed up at start), and the upload is uint8 with
normalisation and argmax on the device, so only 1 byte per pixel crosses PCIe each way.
On CUDA the network is first rewritten by `model.fast.optimize_for_inference` (BN folded, fused
conv + bias + residual + ReLU, Triton depthwise and resize kernels) and whole-image inference
ends in the fused upsample + argmax kernel, which never writes full-resolution logits; with
`compile` the rewritten network also goes through `torch.compile` (dynamic shapes: one graph
for every batch size and bucket).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from model import load_model
from model.fast import optimize_for_inference, whole_image_labels
from model.inference import slide_logits
from model.preprocess import normalize
from service.backends.base import Backend

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class TorchBackend(Backend):
    name = "torch"

    def __init__(self, model=None, device="cpu", precision="fp32", net: torch.nn.Module | None = None, compile: bool = False):
        """``net``: an already built network to serve instead of loading ``model``."""
        super().__init__(model, device, precision)
        self.net = net
        self.compile = compile

    def load(self):
        self._device = torch.device(self.device)
        self._dtype = _DTYPES[self.precision]
        if self.net is None:
            self.net = load_model(self.model, device=str(self._device))
        self.config = self.net.config
        if self._device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            self.net = optimize_for_inference(self.net.to(self._device))
        self.net = self.net.to(self._device, self._dtype, memory_format=torch.channels_last).eval()
        labels = functools.partial(whole_image_labels, self.net)
        self._labels = torch.compile(labels, dynamic=True) if self.compile else labels  # compiled in warm-up
        return self.config

    @torch.inference_mode()
    def infer(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch)
        if self._device.type == "cuda":
            x = x.pin_memory()
        x = normalize(x.to(self._device, non_blocking=True), self.config)
        x = x.to(self._dtype).contiguous(memory_format=torch.channels_last)
        cfg = self.config
        if cfg.inference == "slide":
            labels = slide_logits(self.net, x, cfg.slide_crop, cfg.slide_stride).argmax(dim=1).to(torch.uint8)
        else:
            labels = self._labels(x)
        return labels.cpu().numpy()

    def describe(self) -> dict:
        return {"torch": torch.__version__, "meta": getattr(self.net, "meta", {})}
