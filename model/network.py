"""DeepLabV3+ as mmsegmentation's `EncoderDecoder`: backbone, decode head, auxiliary head."""

from __future__ import annotations

import torch
from torch import nn

from .configs import ModelConfig
from .heads import DepthwiseSeparableASPPHead, FCNHead, resize
from .resnet import ResNet


class DeepLabV3Plus(nn.Module):
    """`forward(x)` equals mmseg's `encode_decode`: logits resized to the input's size."""

    #: channels of `x` (`model.accel.fast.optimize_for_inference` makes it 8: the image's 3, then zeros)
    input_channels = 3

    def __init__(self, config: ModelConfig, with_auxiliary: bool = True):
        super().__init__()
        self.config = config
        self.meta: dict = {}
        self.backbone = ResNet(config.backbone)
        self.decode_head = DepthwiseSeparableASPPHead(config.head, config.num_classes)
        # Only training uses it; kept optional so inference-only models carry no dead weights.
        self.auxiliary_head = FCNHead(config.head, config.num_classes) if with_auxiliary else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize(self.decode(x), x.shape[2:], self.config.head.align_corners)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Logits at 1/4 of the input's size, before the final bilinear resize."""
        return self.decode_head(self.backbone(x))

    def forward_train(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode and auxiliary logits, both at the input's size, for the two training losses."""
        if self.auxiliary_head is None:
            raise RuntimeError("this model was built without its auxiliary head")
        feats = self.backbone(x)
        size, ac = x.shape[2:], self.config.head.align_corners
        return resize(self.decode_head(feats), size, ac), resize(self.auxiliary_head(feats), size, ac)


def build_model(config: ModelConfig, with_auxiliary: bool = True) -> DeepLabV3Plus:
    return DeepLabV3Plus(config, with_auxiliary)
