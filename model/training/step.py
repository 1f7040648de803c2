"""One optimisation step, shared by `model.training.train` and the throughput benchmark."""

from __future__ import annotations

import torch
from torch import nn

from .loss import LossConfig, seg_loss


def train_step(
    forward: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    img: torch.Tensor,
    label: torch.Tensor,
    loss_cfg: LossConfig,
    amp_dtype: torch.dtype | None,
) -> dict[str, torch.Tensor]:
    """Forward under autocast (if any), loss in fp32, backward, step; returns the loss terms."""
    with torch.autocast(img.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits, aux = forward(img)
    losses = seg_loss(logits, aux, label, loss_cfg)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(losses["loss"]).backward()
    scaler.step(optimizer)
    scaler.update()
    return losses
