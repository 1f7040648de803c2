"""DeepLabV3+ decode head and FCN auxiliary head, named like mmsegmentation's modules.

`ConvModule` (conv + BN + ReLU as `conv`/`bn`) and `DepthwiseSeparableConvModule`
(`depthwise_conv`/`pointwise_conv`) mirror mmcv's, so mmseg checkpoints load key for key.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .configs import HeadSpec
from .resnet import BN_EPS


def resize(x: torch.Tensor, size: tuple[int, int] | torch.Size, align_corners: bool) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


class ConvModule(nn.Module):
    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, groups: int = 1):
        super().__init__()
        pad = dilation * (kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, 1, pad, dilation=dilation, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    def __init__(self, cin: int, cout: int, dilation: int = 1):
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, 3, dilation, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ImagePool(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.AdaptiveAvgPool2d(1), ConvModule(cin, cout, 1))


class DepthwiseSeparableASPPHead(nn.Module):
    """ASPP over C5 (image pool, 1x1, separable atrous 3x3s), fused with C2 by two separable convs."""

    def __init__(self, spec: HeadSpec, num_classes: int):
        super().__init__()
        self.align_corners = spec.align_corners
        self.image_pool = ImagePool(spec.in_channels, spec.channels)
        self.aspp_modules = nn.ModuleList(
            ConvModule(spec.in_channels, spec.channels, 1)
            if d == 1
            else DepthwiseSeparableConvModule(spec.in_channels, spec.channels, d)
            for d in spec.dilations
        )
        self.bottleneck = ConvModule((len(spec.dilations) + 1) * spec.channels, spec.channels, 3)
        self.c1_bottleneck = ConvModule(spec.c1_in_channels, spec.c1_channels, 1)
        self.sep_bottleneck = nn.Sequential(
            DepthwiseSeparableConvModule(spec.channels + spec.c1_channels, spec.channels),
            DepthwiseSeparableConvModule(spec.channels, spec.channels),
        )
        self.dropout = nn.Dropout2d(spec.dropout)
        self.conv_seg = nn.Conv2d(spec.channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[3]
        outs = [resize(self.image_pool(x), x.shape[2:], self.align_corners)]
        outs.extend(m(x) for m in self.aspp_modules)
        out = self.bottleneck(torch.cat(outs, dim=1))
        c1 = self.c1_bottleneck(feats[0])
        out = resize(out, c1.shape[2:], self.align_corners)
        out = self.sep_bottleneck(torch.cat([out, c1], dim=1))
        return self.conv_seg(self.dropout(out))


class FCNHead(nn.Module):
    """mmseg's FCNHead with num_convs=1, concat_input=False, on C4: a training-time auxiliary loss."""

    def __init__(self, spec: HeadSpec, num_classes: int):
        super().__init__()
        self.convs = nn.Sequential(ConvModule(spec.aux_in_channels, spec.aux_channels, 3))
        self.dropout = nn.Dropout2d(spec.dropout)
        self.conv_seg = nn.Conv2d(spec.aux_channels, num_classes, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(self.convs(feats[2])))
