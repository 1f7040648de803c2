"""An inference-only DeepLabV3+ that computes the reference network's function faster on a GPU.

`optimize_for_inference(net)` builds a new `FastDeepLabV3Plus` from a `model.network.DeepLabV3Plus`
by constructors, layer by layer (`model.accel.backbone`, `model.accel.head`, `model.accel.layers`):
every BN folded into the conv before it, conv + bias + residual + ReLU fused, the depthwise,
max-pool, concat and resize passes as Triton kernels, the image pool computed on a 3 x 3 map, and
the image's 3 input channels zero-padded to 8 (cuDNN's fp16 tensor-core convs want multiples of 8).
`use_fp8` (opt-in, Hopper GPUs) then swaps the ASPP's bottleneck, R-50/101's largest conv, and
their layer4 for e4m3 weights and activations: not exact (`bench.perf` measures the label
agreement). All else
is exact up to float summation order; `tests/test_fast.py` checks it against the reference and
that no reference layer is left in the fast network.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..configs import ModelConfig
from ..heads import resize
from ..network import DeepLabV3Plus
from ..resnet import ResNet
from .backbone import FastResNet, FusedBlock, Fp8Stage
from .fp8 import K_STEP
from .head import FastASPPHead
from .kernels import normalize_pixels, upsample_argmax
from .layers import CHANNEL_MULTIPLE, Fp8Conv3x3

__all__ = [
    "FP8_MIN_CHANNELS", "FP8_STAGE_CHANNELS", "FastDeepLabV3Plus", "Fp8Conv3x3", "Fp8Stage", "normalizer",
    "optimize_for_inference", "use_fp8", "whole_image_labels",
]  # fmt: skip


#: each reference encoder's fused counterpart: a new backbone adds its pair here
FAST_ENCODERS: dict[type[nn.Module], Callable[[nn.Module], nn.Module]] = {ResNet: FastResNet}


class FastDeepLabV3Plus(nn.Module):
    """`DeepLabV3Plus`'s eval-mode `forward` and `decode` (no auxiliary head, no dropout), taking
    `input_channels` channels: the image's 3, then zeros (`normalizer(..., channels=8)` writes them)."""

    input_channels = CHANNEL_MULTIPLE

    def __init__(self, net: DeepLabV3Plus):
        super().__init__()
        self.config = net.config
        self.meta = copy.deepcopy(net.meta)
        fast_encoder = FAST_ENCODERS.get(type(net.backbone))
        if fast_encoder is None:
            raise TypeError(f"no fast counterpart for the {type(net.backbone).__name__} encoder: add one to FAST_ENCODERS")
        self.backbone = fast_encoder(net.backbone)
        self.decode_head = FastASPPHead(net.decode_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(self.decode(x), x.shape[2:], self.config.head.align_corners)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/4 of the input's size, before the final bilinear resize."""
        return self.decode_head(self.backbone(x))


def optimize_for_inference(net: DeepLabV3Plus) -> FastDeepLabV3Plus:
    """A new `FastDeepLabV3Plus` computing ``net``'s eval-mode function, on its device and in its dtype
    (``net`` is left unchanged)."""
    return FastDeepLabV3Plus(net).eval()


FP8_MIN_CHANNELS = 512
FP8_STAGE_CHANNELS = 2048


def _fp8_ready(stage: nn.Module) -> bool:
    """Whether every conv of a backbone stage fits `Fp8Stage`: stride 1, channels in K steps."""
    if not all(isinstance(block, FusedBlock) for block in stage):
        return False
    convs = [conv for block in stage for conv in (*block.convs, block.downsample) if conv is not None]
    return all(conv.stride == (1, 1) and conv.weight.shape[1] % K_STEP == 0 for conv in convs)


def use_fp8(
    net: FastDeepLabV3Plus, min_channels: int = FP8_MIN_CHANNELS, stage_channels: int = FP8_STAGE_CHANNELS
) -> FastDeepLabV3Plus:  # fmt: skip
    """Swap, in place, the ASPP's bottleneck conv of an `optimize_for_inference` network for
    `Fp8Conv3x3` if it has at least ``min_channels`` output channels (R-50/101: 2048 -> 512; R-18's
    512 -> 128 gains little), and each backbone stage whose output has at least ``stage_channels``
    channels for an `Fp8Stage` if its convs have stride 1 (R-50/101's layer4: e4m3 passed from conv
    to conv, scaled by bounds from the BN statistics). Call it after casting the network to its
    dtype. Timings and label agreement: bench/RESULTS.md."""
    conv = net.decode_head.bottleneck
    if conv.weight.shape[0] >= min_channels and conv.weight.shape[1] % K_STEP == 0:
        net.decode_head.bottleneck = Fp8Conv3x3(conv)
    stages = net.backbone.stages
    for i, stage in enumerate(stages):
        wide = isinstance(stage, nn.Sequential) and stage[-1].convs[-1].weight.shape[0] >= stage_channels
        if wide and _fp8_ready(stage):
            stages[i] = Fp8Stage(stage)
    return net


def whole_image_labels(net: DeepLabV3Plus | FastDeepLabV3Plus, x: torch.Tensor) -> torch.Tensor:
    """uint8 labels at x's size: 1/4-resolution logits, then the fused upsample + argmax (on
    CUDA never writing full-resolution logits). The logits go to the kernel channels-first: for
    one class, neighbouring output pixels then read neighbouring source pixels (coalesced),
    where channels-last spreads a warp's loads over 32 pixels' class vectors."""
    return upsample_argmax(net.decode(x).contiguous(), x.shape[2:], net.config.head.align_corners)


def tta_labels(net: DeepLabV3Plus | FastDeepLabV3Plus, x: torch.Tensor, ratios: tuple[float, ...]) -> torch.Tensor:
    """uint8 labels at x's size from mmseg's multi-scale + flip test: x resized by each ratio (as
    mmcv rounds), with and without a horizontal flip, each pass's softmax brought back to x's
    size and averaged (the mean's argmax is the sum's)."""
    h, w = x.shape[2:]
    align_corners = net.config.head.align_corners
    total = None
    for ratio in ratios:
        size = (int(h * ratio + 0.5), int(w * ratio + 0.5))
        scaled = x if size == (h, w) else F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        for flip in (False, True):
            logits = net.decode(scaled.flip(-1) if flip else scaled).float()
            logits = logits.flip(-1) if flip else logits
            scores = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=align_corners).softmax(dim=1)
            total = scores if total is None else total.add_(scores)
    return total.argmax(dim=1).to(torch.uint8)


def normalizer(
    config: ModelConfig, device: torch.device | str, dtype: torch.dtype = torch.float32, channels: int = 3
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`normalize_pixels` with mean and std placed on `device` once (no host-to-device copy per
    call, so a CUDA graph can capture it), its result cast to `dtype`, channels-last and
    zero-padded to `channels` (the fast network's first conv takes 8)."""
    mean = torch.tensor(config.mean, device=device)
    std = torch.tensor(config.std, device=device)
    return functools.partial(normalize_pixels, mean=mean, std=std, dtype=dtype, channels=channels)
