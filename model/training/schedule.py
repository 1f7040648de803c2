"""mmengine's PolyLR by iteration: lr(t) = (lr0 - eta_min) * (1 - t / T) ** power + eta_min."""

from __future__ import annotations

import torch


def poly_lr(iteration: int, total: int, base_lr: float, min_lr: float = 1e-4, power: float = 0.9) -> float:
    progress = min(iteration, total) / total
    return (base_lr - min_lr) * (1 - progress) ** power + min_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
