"""Inference-only rewrites of a DeepLabV3+ that compute the same function faster on a GPU.

- `fold_batchnorm`: every eval-mode BN folded into the conv before it (one pass instead of two).
- `FusedConv`: conv + bias (+ residual) + ReLU in one cuDNN call on CUDA
  (`torch.cudnn_convolution_relu` / `cudnn_convolution_add_relu`); after folding, PyTorch would
  otherwise add the bias, the residual and the ReLU as three more passes over each activation.
- `AtrousSeparable`: the ASPP's dilated depthwise 3x3 convs (2048 channels, dilation 12/24/36)
  run with cuDNN's slow grouped-direct kernel. A dilation-d conv equals a dilation-1 conv on the
  d x d phase sub-grids of the (zero-padded) input ("space to batch", as in the original atrous
  paper's implementation), which cuDNN's fast depthwise kernel serves. The following 1x1
  pointwise conv is per-pixel, so it runs on the sub-grids too and only its 4x smaller output is
  rearranged back.
Both are exact up to float summation order; `tests/test_fast.py` checks them against the original.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .heads import ConvModule, DepthwiseSeparableConvModule
from .network import DeepLabV3Plus
from .resnet import BasicBlock, Bottleneck


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
            pairs = [(a, b) for a, b in zip(children, list(children)[1:])]
        else:
            pairs = [(n, n.replace("conv", "bn")) for n in children if n.startswith("conv") and n != "conv_seg"]
        for conv_name, bn_name in pairs:
            conv, bn = children.get(conv_name), children.get(bn_name)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                setattr(parent, conv_name, _fold(conv, bn))
                setattr(parent, bn_name, nn.Identity())
    return module


def space_to_batch(x: torch.Tensor, d: int) -> torch.Tensor:
    """N x C x H x W -> (N*d*d) x C x ceil(H/d) x ceil(W/d): the d x d phase sub-grids.

    Zero padding up to a multiple of d keeps the conv's own zero padding exact. Channels-last
    input gives channels-last sub-grids, so cuDNN keeps its NHWC kernels.
    """
    n, c, h, w = x.shape
    hp, wp = -(-h // d), -(-w // d)
    x = F.pad(x, (0, wp * d - w, 0, hp * d - h)).reshape(n, c, hp, d, wp, d)  # (n, c, a, i, b, j)
    if _channels_last(x.reshape(n, c, hp * d, wp * d)):
        return x.permute(0, 3, 5, 2, 4, 1).reshape(n * d * d, hp, wp, c).permute(0, 3, 1, 2)
    return x.permute(0, 3, 5, 1, 2, 4).reshape(n * d * d, c, hp, wp)


def batch_to_space(x: torch.Tensor, d: int, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of `space_to_batch`, cropped back to `size` (h, w)."""
    nd, c, hp, wp = x.shape
    n = nd // (d * d)
    if _channels_last(x):
        x = x.permute(0, 2, 3, 1).reshape(n, d, d, hp, wp, c).permute(0, 3, 1, 4, 2, 5)
        x = x.reshape(n, hp * d, wp * d, c).permute(0, 3, 1, 2)
    else:
        x = x.reshape(n, d, d, c, hp, wp).permute(0, 3, 4, 1, 5, 2).reshape(n, c, hp * d, wp * d)
    return x[:, :, : size[0], : size[1]]


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1


class AtrousSeparable(nn.Module):
    """A dilated DepthwiseSeparableConvModule computed on phase sub-grids with dilation 1."""

    def __init__(self, module: DepthwiseSeparableConvModule):
        super().__init__()
        self.dilation = module.depthwise_conv.conv.dilation[0]
        self.module = copy.deepcopy(module)
        dw = self.module.depthwise_conv.conv
        dw.dilation, dw.padding = (1, 1), (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return batch_to_space(self.module(space_to_batch(x, self.dilation)), self.dilation, size)


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


class FusedBlock(nn.Module):
    """A folded BasicBlock/Bottleneck whose last conv adds the shortcut and applies ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck):
        super().__init__()
        names = ["conv1", "conv2"] + (["conv3"] if isinstance(block, Bottleneck) else [])
        self.convs = nn.ModuleList(FusedConv(getattr(block, n), relu=True) for n in names)
        self.downsample = FusedConv(block.downsample[0], relu=False) if block.downsample is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


def fuse_activations(module: nn.Module) -> nn.Module:
    """Replace folded ConvModules, stems and residual blocks by `FusedConv`/`FusedBlock` (in place)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvModule):
                setattr(parent, name, FusedConv(child.conv, relu=True))
            elif isinstance(child, (BasicBlock, Bottleneck)):
                setattr(parent, name, FusedBlock(child))
    backbone = module.backbone
    if backbone.deep_stem:
        convs = [m for m in backbone.stem if isinstance(m, nn.Conv2d)]
        backbone.stem = nn.Sequential(*(FusedConv(c, relu=True) for c in convs))
    else:
        backbone.conv1, backbone.relu = FusedConv(backbone.conv1, relu=True), nn.Identity()
    return module


def optimize_for_inference(net: DeepLabV3Plus, fuse: bool = True) -> DeepLabV3Plus:
    """A copy with BN folded, the ASPP's atrous separable convs on sub-grids and (with `fuse`)
    conv + bias + residual + ReLU fused; eval only."""
    fast = copy.deepcopy(net).eval()
    fast.auxiliary_head = None
    fold_batchnorm(fast)
    aspp = fast.decode_head.aspp_modules
    for i, m in enumerate(aspp):
        if isinstance(m, DepthwiseSeparableConvModule) and m.depthwise_conv.conv.dilation[0] > 1:
            aspp[i] = AtrousSeparable(m)
    return fuse_activations(fast) if fuse else fast
