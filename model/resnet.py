"""ResNet backbones laid out exactly as mmsegmentation's `ResNet` / `ResNetV1c`.

Module names (`stem.0`, `conv1`/`bn1`, `layerN.i.convK`/`bnK`, `downsample.0/1`) match mmseg's, so
its state_dict keys load with a plain `load_state_dict`. Dilated stages follow mmseg's `ResLayer`:
with `contract_dilation` the first block of a dilated stage uses half the dilation, and multi-grid
replaces (not multiplies) the last stage's dilations.
"""

from __future__ import annotations

import torch
from torch import nn

from .configs import BackboneSpec

BN_EPS = 1e-5


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = dilation * (kernel // 2)
    return [
        nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        # mmseg's BasicBlock dilates only its first conv; the second keeps dilation 1.
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 3, stride, dilation)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, dilation: int, downsample: nn.Module | None):
        super().__init__()
        # "pytorch" style: the stride sits on the 3x3 conv.
        self.conv1, self.bn1 = conv_bn(inplanes, planes, 1)
        self.conv2, self.bn2 = conv_bn(planes, planes, 3, stride, dilation)
        self.conv3, self.bn3 = conv_bn(planes, planes * self.expansion, 1)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_LAYOUT = {18: (BasicBlock, (2, 2, 2, 2)), 50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3))}


def block_dilations(spec: BackboneSpec, stage: int, num_blocks: int) -> list[int]:
    """Per-block dilations of one stage, following mmseg's ResLayer."""
    dilation = spec.dilations[stage]
    if spec.multi_grid is not None and stage == 3:
        return [spec.multi_grid[i] for i in range(num_blocks)]
    first = dilation // 2 if dilation > 1 and spec.contract_dilation else dilation
    return [first] + [dilation] * (num_blocks - 1)


class ResNet(nn.Module):
    """Returns the four stage outputs (C2..C5), as mmseg's backbone with out_indices=(0, 1, 2, 3)."""

    def __init__(self, spec: BackboneSpec, stem_channels: int = 64, base_channels: int = 64):
        super().__init__()
        block, counts = _LAYOUT[spec.depth]
        self.deep_stem = spec.deep_stem
        if spec.deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                *conv_bn(3, half, 3, 2), nn.ReLU(inplace=True),
                *conv_bn(half, half, 3), nn.ReLU(inplace=True),
                *conv_bn(half, stem_channels, 3), nn.ReLU(inplace=True),
            )  # fmt: skip
        else:
            self.conv1 = nn.Conv2d(3, stem_channels, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_channels, eps=BN_EPS)
            self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_channels
        self.stage_names = []
        for i, n in enumerate(counts):
            planes = base_channels * 2**i
            stride = spec.strides[i]
            downsample = None
            if stride != 1 or inplanes != planes * block.expansion:
                downsample = nn.Sequential(*conv_bn(inplanes, planes * block.expansion, 1, stride))
            blocks = []
            for j, dilation in enumerate(block_dilations(spec, i, n)):
                blocks.append(block(inplanes, planes, stride if j == 0 else 1, dilation, downsample if j == 0 else None))
                inplanes = planes * block.expansion
            name = f"layer{i + 1}"
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x) if self.deep_stem else self.relu(self.bn1(self.conv1(x)))
        x = self.maxpool(x)
        outs = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            outs.append(x)
        return outs
