"""mmseg's weight initialisation for training from scratch (the network itself leaves torch's defaults).

mmseg's ResNet (no pretrained weights): Kaiming-normal convs (fan_out, ReLU gain), BN weight 1 and
bias 0, and `zero_init_residual`: the last BN of every residual block starts at 0, so each block
starts as an identity. mmcv's ConvModule: Kaiming-normal too. Decode and auxiliary heads: the
classifier `conv_seg` is Normal(0, 0.01) with bias 0.
"""

from __future__ import annotations

from torch import nn

from ..network import DeepLabV3Plus
from ..resnet import BasicBlock, Bottleneck


def init_weights(net: DeepLabV3Plus) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in net.backbone.modules():
        if isinstance(m, BasicBlock):
            nn.init.zeros_(m.bn2.weight)
        elif isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)
    for head in (net.decode_head, net.auxiliary_head):
        if head is not None:
            nn.init.normal_(head.conv_seg.weight, std=0.01)
            nn.init.zeros_(head.conv_seg.bias)
