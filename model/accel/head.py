"""The DeepLabV3+ decode head with fewer passes over its largest tensors (`FastASPPHead`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..heads import ConvModule, DepthwiseSeparableASPPHead, DepthwiseSeparableConvModule
from .kernels import concat_channels, resize_concat, spread_borders
from .layers import Fp8Conv3x3, FusedConv, FusedSeparable, expect_type, fold_conv_bn, geometry, round_up


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


def _fast_branch(branch: nn.Module) -> FusedConv | FusedSeparable:
    if isinstance(branch, ConvModule):
        return FusedConv.from_conv_module(branch)
    return FusedSeparable(branch)


class FastASPPHead(nn.Module):
    """A `DepthwiseSeparableASPPHead`'s function (eval mode: no dropout), BN folded, in fewer passes.

    The image-pool branch is one value per image and channel, broadcast over the map; its share of
    the 3x3 bottleneck conv (the first `channels` of its inputs, `pool_weight`) is computed on a
    3 x 3 map by `_constant_map_conv` and enters the bottleneck as its residual, so the broadcast
    map is never built or concatenated; its mean over the map comes out of the first separable
    branch's depthwise pass (`depthwise3x3_relu_and_mean`), which reads the same input. The
    ASPP's concat runs at memory speed (`concat_channels`), the decoder's resize + concat is one
    pass (`resize_concat`), padded with zero channels to `concat_channels`, a multiple of 8."""

    def __init__(self, head: DepthwiseSeparableASPPHead):
        super().__init__()
        expect_type(head, DepthwiseSeparableASPPHead, "decode head")
        self.align_corners = head.align_corners
        mean, conv = head.image_pool
        expect_type(mean, nn.AdaptiveAvgPool2d, "image pool's mean")  # taken by the depthwise pass: see forward
        self.image_pool = FusedConv.from_conv_module(conv)
        self.aspp_modules = nn.ModuleList(_fast_branch(m) for m in head.aspp_modules)
        if not any(isinstance(m, DepthwiseSeparableConvModule) for m in head.aspp_modules):
            raise ValueError("the image pool's mean comes from a separable ASPP branch; this head has none")
        conv = head.bottleneck.conv
        weight, bias = fold_conv_bn(conv, head.bottleneck.bn)
        pool_channels = self.image_pool.weight.shape[0]
        self.pool_weight = nn.Parameter(weight[:, :pool_channels].clone(), requires_grad=False)
        self.bottleneck = FusedConv(weight[:, pool_channels:], bias, relu=True, **geometry(conv))
        self.c1_bottleneck = FusedConv.from_conv_module(head.c1_bottleneck)
        first, second = head.sep_bottleneck
        self.concat_channels = round_up(first.depthwise_conv.conv.in_channels)
        self.sep_bottleneck = nn.Sequential(FusedSeparable(first, self.concat_channels), FusedSeparable(second))
        self.conv_seg = FusedConv.from_conv(head.conv_seg)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[3]
        branches, pool_value = [], None
        for m in self.aspp_modules:
            if pool_value is None and isinstance(m, FusedSeparable):
                # the first separable branch's depthwise pass also averages x for the image pool
                depthwise, mean = m.depthwise.with_mean(x)
                pool_value = self.image_pool(mean.to(x.dtype)[:, :, None, None])
                branches.append(m.pointwise(depthwise))
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
