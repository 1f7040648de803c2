"""The ResNet backbone with every conv + BN folded and fused (`FastResNet`), built from `model.resnet.ResNet`;
`Fp8Stage`: one of its stages in FP8, for `model.accel.fast.use_fp8`."""

from __future__ import annotations

import torch
from torch import nn

from ..resnet import BasicBlock, Bottleneck, ResNet
from .fp8 import quantize_padded
from .layers import (
    CHANNEL_MULTIPLE, Fp8Conv, FusedConv, StemMaxPool, activation_bound, expect_type, fold_conv_bn, geometry,
)  # fmt: skip


class FusedBlock(nn.Module):
    """A BasicBlock/Bottleneck, BN folded, whose last conv adds the shortcut and applies ReLU.

    ``in_bound``: a bound of |input| (`model.accel.layers.activation_bound`); the block's output is
    then bounded by its last conv's bound plus its shortcut's (``out_bound``): FP8's static scales."""

    def __init__(self, block: BasicBlock | Bottleneck, in_bound: torch.Tensor | None = None):
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
            self.downsample = FusedConv(weight, None, relu=False, **geometry(conv), out_bound=activation_bound(bn))
            folded[-1] = (folded[-1][0], folded[-1][1] + bias)
        self.convs = nn.ModuleList(
            FusedConv(weight, bias, relu=True, **geometry(conv), out_bound=activation_bound(bn))
            for (conv, bn), (weight, bias) in zip(pairs, folded, strict=True)
        )
        self.in_bound = in_bound
        shortcut = in_bound if self.downsample is None else self.downsample.out_bound
        self.out_bound = None if shortcut is None else self.convs[-1].out_bound + shortcut

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


def fused_stage(blocks: nn.Sequential, in_bound: torch.Tensor) -> nn.Sequential:
    """`FusedBlock`s of one stage, each bounding its input by the block before it."""
    fused = []
    for block in blocks:
        fused.append(FusedBlock(block, in_bound))
        in_bound = fused[-1].out_bound
    return nn.Sequential(*fused)


class FastResNet(nn.Module):
    """Returns the four stage outputs (C2..C5) of the `ResNet` it was built from."""

    def __init__(self, backbone: ResNet):
        super().__init__()
        self.stem = fused_stem(backbone)
        bound = self.stem[-2].out_bound  # the max pool keeps the last conv's bound
        self.stages = nn.ModuleList()
        for name in backbone.stage_names:
            self.stages.append(fused_stage(getattr(backbone, name), bound))
            bound = self.stages[-1][-1].out_bound

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class Fp8Block(nn.Module):
    """A `FusedBlock` whose convs run in FP8 (`Fp8Conv`), each passing its result to the next as e4m3
    scaled by the static bound of that activation (`FusedBlock`'s bounds): no amax or quantize pass
    inside the block. Takes the block's input in fp16 (for the shortcut) and as e4m3 padded by
    ``in_pad``; returns its output in fp16 and, when asked, as the next block's e4m3 input."""

    def __init__(self, block: FusedBlock):
        super().__init__()
        expect_type(block, FusedBlock, "FP8 block's source")
        if block.in_bound is None:
            raise ValueError("an FP8 block needs its input's bound: build its FusedBlock with in_bound")
        self.convs = nn.ModuleList(Fp8Conv(conv) for conv in block.convs)
        self.downsample = None if block.downsample is None else Fp8Conv(block.downsample)
        bounds = [block.in_bound] + [conv.out_bound for conv in block.convs[:-1]] + [block.out_bound]
        self.register_buffer("bounds", torch.stack(bounds).float().to(block.convs[0].weight.device))
        self.in_pad = self.convs[0].pad or 0

    def forward(
        self, x: torch.Tensor, q: torch.Tensor, out_pad: int | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """(fp16 output, its e4m3 padded by ``out_pad``, or None when ``out_pad`` is None)."""
        bounds = self.bounds.float()
        pad = self.in_pad
        identity = x
        if self.downsample is not None:
            identity, _ = self.downsample.run(q, bounds[0:1], pad)
        for i, conv in enumerate(self.convs[:-1]):
            next_pad = self.convs[i + 1].pad or 0
            _, q = conv.run(q, bounds[i : i + 1], pad, out_amax=bounds[i + 1 : i + 2], out_pad=next_pad, fp16_out=False)
            pad = next_pad
        last = len(self.convs) - 1
        out_amax = None if out_pad is None else bounds[last + 1 :]
        return self.convs[-1].run(q, bounds[last : last + 1], pad, identity, out_amax, out_pad or 0)


class Fp8Stage(nn.Module):
    """A stage of `FusedBlock`s as `Fp8Block`s: its fp16 input quantized once (by its static bound),
    e4m3 passed from block to block, fp16 out (what the head reads)."""

    def __init__(self, stage: nn.Sequential):
        super().__init__()
        self.blocks = nn.ModuleList(Fp8Block(block) for block in stage)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = self.blocks[0]
        q = quantize_padded([x], first.bounds[:1].float(), first.in_pad)
        for i, block in enumerate(self.blocks):
            out_pad = self.blocks[i + 1].in_pad if i + 1 < len(self.blocks) else None
            x, q = block(x, q, out_pad)
        return x
