"""The ResNet backbone with every conv + BN folded and fused (`FastResNet`), built from `model.resnet.ResNet`."""

from __future__ import annotations

import torch
from torch import nn

from ..resnet import BasicBlock, Bottleneck, ResNet
from .layers import CHANNEL_MULTIPLE, FusedConv, StemMaxPool, fold_conv_bn, geometry


class FusedBlock(nn.Module):
    """A BasicBlock/Bottleneck, BN folded, whose last conv adds the shortcut and applies ReLU."""

    def __init__(self, block: BasicBlock | Bottleneck):
        super().__init__()
        if isinstance(block, Bottleneck):
            pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
        elif isinstance(block, BasicBlock):
            pairs = [(block.conv1, block.bn1), (block.conv2, block.bn2)]
        else:
            raise TypeError(f"expected a BasicBlock or Bottleneck, got {type(block).__name__}")
        folded = [fold_conv_bn(conv, bn) for conv, bn in pairs]
        self.downsample = None
        if block.downsample is not None:
            conv, bn = block.downsample  # model.resnet.conv_bn: the 1x1 conv and its BN
            weight, bias = fold_conv_bn(conv, bn)
            # relu(conv(x) + b + ds(x) + b_ds): b_ds joins b, so the shortcut conv adds no bias
            # in a pass of its own over a large tensor
            self.downsample = FusedConv(weight, None, relu=False, **geometry(conv))
            folded[-1] = (folded[-1][0], folded[-1][1] + bias)
        self.convs = nn.ModuleList(
            FusedConv(weight, bias, relu=True, **geometry(conv))
            for (conv, _), (weight, bias) in zip(pairs, folded, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        for conv in self.convs[:-1]:
            x = conv(x)
        return self.convs[-1](x, residual=identity)


def fused_stem(backbone: ResNet) -> nn.Sequential:
    """The stem's convs + BN + ReLU (v1c: three 3x3 in `stem`; "b": the 7x7 `conv1`/`bn1`), then
    its max pool. The first conv takes `CHANNEL_MULTIPLE` input channels: the image's 3, then zeros."""
    if backbone.deep_stem:
        stem = backbone.stem  # (conv, BN, ReLU) x 3, as model.resnet.ResNet builds it
        if len(stem) != 9 or not all(isinstance(stem[i], nn.ReLU) for i in (2, 5, 8)):
            raise ValueError(f"expected the v1c stem's 3 x (conv, BN, ReLU), got {stem}")
        pairs = [(stem[i], stem[i + 1]) for i in range(0, 9, 3)]
    else:
        pairs = [(backbone.conv1, backbone.bn1)]
    convs = [
        FusedConv.from_conv_bn(conv, bn, relu=True, in_channels=CHANNEL_MULTIPLE if i == 0 else None)
        for i, (conv, bn) in enumerate(pairs)
    ]
    return nn.Sequential(*convs, StemMaxPool(backbone.maxpool))


class FastResNet(nn.Module):
    """Returns the four stage outputs (C2..C5) of the `ResNet` it was built from."""

    def __init__(self, backbone: ResNet):
        super().__init__()
        self.stem = fused_stem(backbone)
        self.stages = nn.ModuleList(
            nn.Sequential(*(FusedBlock(block) for block in getattr(backbone, name))) for name in backbone.stage_names
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs
