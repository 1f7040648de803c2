"""mmengine's PolyLR by iteration, closed form of its recursive update.

mmengine counts `end - begin - 1` steps, so the last iteration of a run trains at eta_min:
lr(t) = (lr0 - eta_min) * (1 - t / (T - 1)) ** power + eta_min for a run of T iterations.
"""

from __future__ import annotations

import torch


def poly_lr(iteration: int, total: int, base_lr: float, min_lr: float = 1e-4, power: float = 0.9) -> float:
    steps = max(total - 1, 1)
    return (base_lr - min_lr) * (1 - min(iteration, steps) / steps) ** power + min_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
