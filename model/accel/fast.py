"""Inference-only rewrites of a DeepLabV3+ that compute the same function faster on a GPU.

- `fold_batchnorm`: every eval-mode BN folded into the conv before it (one pass instead of two).
- `FusedConv`: conv + bias (+ residual) + ReLU in one cuDNN call on CUDA
  (`torch.cudnn_convolution_relu` / `cudnn_convolution_add_relu`); after folding, PyTorch would
  otherwise add the bias, the residual and the ReLU as three more passes over each activation.
- `FusedDepthwise`: the depthwise 3x3 convs of the separable convs (+ bias + ReLU) as one Triton
  pass (`model.accel.kernels.depthwise3x3_relu`); cuDNN runs the ASPP's dilated ones (2048 channels,
  dilation 12/24/36) with a slow grouped-direct kernel, 3.3 ms each at 1024x2048 on an H100.
- `StemMaxPool`: the stem's max pool without PyTorch's int64 indices (`model.accel.kernels.max_pool3x3s2`).
- `FastASPPHead`: the image-pool branch's share of the bottleneck conv computed on a 3x3 map
  instead of over a broadcast full-size map, its mean taken in a depthwise pass that reads the
  same input anyway, the ASPP's concat at memory speed
  (`model.accel.kernels.concat_channels`), and the decoder's resize + concat as one pass
  (`model.accel.kernels.resize_concat`).
- `use_fp8` (opt-in, Hopper GPUs): the ASPP's bottleneck, R-50/101's largest conv, with e4m3
  weights and activations (`model.accel.fp8`); not exact (`bench.perf` measures the label agreement).
- Channel padding: cuDNN's fp16 tensor-core convs take input channels in multiples of 8 and pad
  any other count in a pass of their own (`nhwcAddPaddingKernel`: 3% of R-18-D8's time, for the
  3-channel image and the decoder's 128 + 12 channels). The first conv and the decoder's first
  separable conv get zero weights for the extra channels, and their producers (the input
  normalisation, `resize_concat`) write zeros there, so the network takes `input_channels` = 8.
All are exact up to float summation order; `tests/test_fast.py` checks them against the original.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import ConvModule, DepthwiseSeparableASPPHead, DepthwiseSeparableConvModule
from .fp8 import K_STEP, conv3x3_fp8, image_amax, quantize_padded, quantize_weight
from ..configs import ModelConfig
from ..network import DeepLabV3Plus
from ..resnet import BasicBlock, Bottleneck
from .kernels import (
    concat_channels, depthwise3x3_relu, depthwise3x3_relu_and_mean, max_pool3x3s2, normalize_pixels, resize_concat,
    spread_borders, upsample_argmax,
)  # fmt: skip


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True,
    ).to(conv.weight.device, conv.weight.dtype)  # fmt: skip
    fused.weight.data = conv.weight * scale.view(-1, 1, 1, 1)
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.data = (bias - bn.running_mean) * scale + bn.bias
    return fused


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold each BatchNorm2d into the Conv2d that feeds it (in place; the BN becomes Identity).

    Pairs are found the way our modules are built: adjacent in an nn.Sequential, or named
    `conv`/`bn` and `convN`/`bnN` on one parent.
    """
    for parent in module.modules():
        children = dict(parent.named_children())
        if isinstance(parent, nn.Sequential):
            pairs = list(zip(list(children)[:-1], list(children)[1:], strict=True))
        else:
            pairs = [(n, n.replace("conv", "bn")) for n in children if n.startswith("conv") and n != "conv_seg"]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, _fold(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return module


class FusedConv(nn.Module):
    """A BN-folded conv with its bias, optional residual and optional ReLU applied in one call."""

    def __init__(self, conv: nn.Conv2d, relu: bool):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.relu = relu

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if x.is_cuda and self.relu and x.dtype != torch.bfloat16:
            if residual is None:
                return torch.cudnn_convolution_relu(x, self.weight, self.bias, *args)
            return torch.cudnn_convolution_add_relu(x, self.weight, residual, 1.0, self.bias, *args)
        y = F.conv2d(x, self.weight, self.bias, *args)
        if residual is not None:
            y = y + residual
        return F.relu(y) if self.relu else y


class FusedDepthwise(nn.Module):
    """A BN-folded depthwise 3x3 conv + ReLU (the first half of a separable conv)."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.dilation = conv.dilation[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise3x3_relu(x, self.weight, self.bias, self.dilation)

    def with_mean(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The output, and x's mean per image and channel (N x C float32) from the same pass."""
        return depthwise3x3_relu_and_mean(x, self.weight, self.bias, self.dilation)


class FusedBlock(nn.Module):
    """A folded BasicBlock/Bottleneck whose last conv adds the shortcut and applies ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck):
        super().__init__()
        names = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
        self.convs = nn.ModuleList(FusedConv(getattr(block, n), relu=True) for n in names)
        self.downsample = None
        if block.downsample is not None:
            # relu(conv(x) + b + ds(x) + b_ds): b_ds joins b, so the shortcut conv has no bias,
            # which PyTorch would add in a separate pass over a large tensor (0.4 ms image)
            self.downsample = FusedConv(block.downsample[0], relu=False)
            self.convs[-1].bias.data += self.downsample.bias.data
            self.downsample.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


CHANNEL_MULTIPLE = 8


def _round_up(channels: int) -> int:
    return -(-channels // CHANNEL_MULTIPLE) * CHANNEL_MULTIPLE


def _zero_pad_inputs(layer: FusedConv | FusedDepthwise, channels: int) -> None:
    """Give ``layer`` ``channels`` input channels; the new ones get zero weights (and, depthwise,
    a zero bias), so the real channels' outputs do not depend on them (while they are finite)."""
    depthwise = isinstance(layer, FusedDepthwise)
    extra = channels - layer.weight.shape[0 if depthwise else 1]
    pad = (0, 0, 0, 0, 0, 0, 0, extra) if depthwise else (0, 0, 0, 0, 0, extra)
    layer.weight = nn.Parameter(F.pad(layer.weight.data, pad), requires_grad=False)
    if depthwise:
        layer.bias = nn.Parameter(F.pad(layer.bias.data, (0, extra)), requires_grad=False)


class StemMaxPool(nn.Module):
    """The backbone's `nn.MaxPool2d(3, 2, 1)`, as one Triton pass on CUDA."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return max_pool3x3s2(x)


def fuse_activations(module: nn.Module) -> nn.Module:
    """Replace folded ConvModules, stems and residual blocks by `FusedConv`/`FusedBlock` (in place)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvModule):
                depthwise = child.conv.groups > 1
                setattr(parent, name, FusedDepthwise(child.conv) if depthwise else FusedConv(child.conv, relu=True))
            elif isinstance(child, (BasicBlock, Bottleneck)):
                setattr(parent, name, FusedBlock(child))
    backbone = module.backbone
    if backbone.deep_stem:
        convs = [m for m in backbone.stem if isinstance(m, nn.Conv2d)]
        backbone.stem = nn.Sequential(*(FusedConv(c, relu=True) for c in convs))
    else:
        backbone.conv1, backbone.relu = FusedConv(backbone.conv1, relu=True), nn.Identity()
    return module


def _constant_map_conv(value: torch.Tensor, weight: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """conv3x3 (zero padding 1) of the N x C x 1 x 1 ``value`` broadcast to ``size``, on an (at
    most) 3 x 3 map: the full result depends only on whether a pixel is on the first or last row
    or column, so it is this map spread over the 9 border/interior regions (`spread_borders`)."""
    h, w = size
    return F.conv2d(value.expand(-1, -1, min(h, 3), min(w, 3)), weight, padding=1)


def _spread_like(small: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    out = spread_borders(small, like.shape[2:])
    if like.is_contiguous(memory_format=torch.channels_last):
        return out.contiguous(memory_format=torch.channels_last)
    return out.contiguous()


class Fp8Conv3x3(nn.Module):
    """A BN-folded 3x3 stride-1 conv + bias (+ residual) (+ ReLU) with e4m3 weights and inputs
    (`model.accel.fp8`). Its input may be a list of maps: their channel concat, never written in fp16;
    its residual may be a map of at most 3 x 3, spread over the output (`conv3x3_fp8`)."""

    def __init__(self, conv: FusedConv):
        super().__init__()
        weight_q, weight_scale = quantize_weight(conv.weight.detach())
        # bytes, so that casting the module (.half()) leaves the e4m3 weights alone
        self.register_buffer("weight_bits", weight_q.view(torch.uint8))
        self.register_buffer("weight_scale", weight_scale)
        self.bias = nn.Parameter(conv.bias.detach().clone(), requires_grad=False)
        self.dilation, self.relu = conv.dilation[0], conv.relu

    def forward(self, x: torch.Tensor | list[torch.Tensor], residual: torch.Tensor | None = None) -> torch.Tensor:
        maps = x if isinstance(x, list) else [x]
        amax = image_amax(maps)
        q = quantize_padded(maps, amax, self.dilation)
        weight_q = self.weight_bits.view(torch.float8_e4m3fn)
        return conv3x3_fp8(q, amax, weight_q, self.weight_scale.float(), self.bias, self.dilation, residual, self.relu)


FP8_MIN_CHANNELS = 512


def use_fp8(net: DeepLabV3Plus, min_channels: int = FP8_MIN_CHANNELS) -> DeepLabV3Plus:
    """Swap the ASPP's bottleneck conv of an `optimize_for_inference` network for `Fp8Conv3x3`
    (in place), if it has at least ``min_channels`` output channels (R-50/101: 2048 -> 512; R-18's
    512 -> 128 gains little). Call it after casting the network to its dtype. Layer4's 3x3 convs in
    FP8 as well would save at most ~0.4 ms more per R-50 batch of 8 (`bench.kernel_variants
    --parts fp8conv`), but in one run on random calibrated weights left 68% of the labels equal
    to fp32's, against 86% for fp16 and for the bottleneck alone."""
    conv = net.decode_head.bottleneck
    if conv.weight.shape[0] >= min_channels and conv.weight.shape[1] % K_STEP == 0:
        net.decode_head.bottleneck = Fp8Conv3x3(conv)
    return net


class FastASPPHead(DepthwiseSeparableASPPHead):
    """The decode head with fewer passes over its largest tensors; same weights, same function.

    The image-pool branch is one value per image and channel, broadcast over the map; its share of
    the 3x3 bottleneck conv (a fifth of the head's largest conv) is computed on a 3 x 3 map by
    `_constant_map_conv` and enters the bottleneck as its residual, so the broadcast map is never
    built or concatenated; its mean over the map comes out of the first separable branch's
    depthwise pass (`depthwise3x3_relu_and_mean`), which reads the same input. The decoder's
    resize + concat is one pass (`resize_concat`)."""

    @classmethod
    def adopt(cls, head: DepthwiseSeparableASPPHead) -> FastASPPHead:
        """Turn a folded and fused head into this class in place: the bottleneck's weights for
        the image-pool channels (the first `channels` inputs) move to `pool_weight`; the
        decoder's concat is padded to `concat_channels`, a multiple of 8."""
        head.__class__ = cls
        weight = head.bottleneck.weight.data
        pool_channels = head.image_pool[-1].weight.shape[0]
        head.pool_weight = nn.Parameter(weight[:, :pool_channels].clone(), requires_grad=False)
        head.bottleneck.weight = nn.Parameter(weight[:, pool_channels:].clone(), requires_grad=False)
        separable = head.sep_bottleneck[0]
        head.concat_channels = _round_up(separable.depthwise_conv.weight.shape[0])
        _zero_pad_inputs(separable.depthwise_conv, head.concat_channels)
        _zero_pad_inputs(separable.pointwise_conv, head.concat_channels)
        return head

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[3]
        branches, pool_value = [], None
        for m in self.aspp_modules:
            if pool_value is None and isinstance(m, DepthwiseSeparableConvModule):
                # the first separable branch's depthwise pass also averages x for the image pool
                depthwise, mean = m.depthwise_conv.with_mean(x)
                pool_value = self.image_pool[1](mean.to(x.dtype)[:, :, None, None])
                branches.append(m.pointwise_conv(depthwise))
            else:
                branches.append(m(x))
        pool = _constant_map_conv(pool_value, self.pool_weight, x.shape[2:])
        if isinstance(self.bottleneck, Fp8Conv3x3):  # takes the branches and the 3 x 3 map as they are
            out = self.bottleneck(branches, residual=pool)
        else:
            out = self.bottleneck(concat_channels(branches), residual=_spread_like(pool, x))
        concat = resize_concat(out, self.c1_bottleneck(feats[0]), self.align_corners, self.concat_channels)
        out = self.sep_bottleneck(concat)
        return self.conv_seg(out)


def optimize_for_inference(net: DeepLabV3Plus) -> DeepLabV3Plus:
    """A copy with BN folded, the fast decode head and conv + bias + residual + ReLU fused; eval
    only (the head's dropout is skipped). It takes `input_channels` (8) channels: the image's 3,
    then zeros (`normalizer(..., channels=8)` writes them)."""
    fast = copy.deepcopy(net).eval()
    fast.auxiliary_head = None
    fuse_activations(fold_batchnorm(fast))
    fast.backbone.maxpool = StemMaxPool()
    FastASPPHead.adopt(fast.decode_head)
    backbone = fast.backbone
    _zero_pad_inputs(backbone.stem[0] if backbone.deep_stem else backbone.conv1, CHANNEL_MULTIPLE)
    fast.input_channels = CHANNEL_MULTIPLE
    return fast


def whole_image_labels(net: DeepLabV3Plus, x: torch.Tensor) -> torch.Tensor:
    """uint8 labels at x's size: 1/4-resolution logits, then the fused upsample + argmax (on
    CUDA never writing full-resolution logits). The logits go to the kernel channels-first: for
    one class, neighbouring output pixels then read neighbouring source pixels (coalesced),
    where channels-last spreads a warp's loads over 32 pixels' class vectors."""
    return upsample_argmax(net.decode(x).contiguous(), x.shape[2:], net.config.head.align_corners)


def normalizer(
    config: ModelConfig, device: torch.device | str, dtype: torch.dtype = torch.float32, channels: int = 3
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`normalize_pixels` with mean and std placed on `device` once (no host-to-device copy per
    call, so a CUDA graph can capture it), its result cast to `dtype`, channels-last and
    zero-padded to `channels` (the fast network's first conv takes 8)."""
    mean = torch.tensor(config.mean, device=device)
    std = torch.tensor(config.std, device=device)
    return functools.partial(normalize_pixels, mean=mean, std=std, dtype=dtype, channels=channels)
