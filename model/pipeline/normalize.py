"""uint8 RGB pixels -> the network's normalised float input, as mmseg's `SegDataPreProcessor`.

This is the plain-PyTorch reference every engine's input matches; the GPU fast path has a
one-pass Triton drop-in (`model.accel.kernels.normalize_pixels`) tested against it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..configs import ModelConfig


def normalize_pixels_reference(
    pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dtype: torch.dtype = torch.float32, channels: int = 3
) -> torch.Tensor:
    """uint8 N x H x W x 3 -> ``dtype`` N x ``channels`` x H x W channels-last: ``(pixels - mean) /
    std``, then zero channels up to ``channels``."""
    x = (pixels.permute(0, 3, 1, 2).float() - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)
    x = F.pad(x, (0, 0, 0, 0, 0, channels - x.shape[1]))
    return x.to(dtype).contiguous(memory_format=torch.channels_last)


def normalize(batch: torch.Tensor, config: ModelConfig) -> torch.Tensor:
    """uint8 N x H x W x 3 (any device) to normalised float32 N x 3 x H x W."""
    mean = torch.tensor(config.mean, device=batch.device)
    std = torch.tensor(config.std, device=batch.device)
    return normalize_pixels_reference(batch, mean, std)
