"""The run's clock: mmengine's PolyLR by iteration (closed form of its recursive update) and the
wall-time limit of ``--max-minutes``.

mmengine counts `end - begin - 1` steps, so the last iteration of a run trains at eta_min:
lr(t) = (lr0 - eta_min) * (1 - t / (T - 1)) ** power + eta_min for a run of T iterations.
"""

from __future__ import annotations

import dataclasses
import time

import torch


def poly_lr(iteration: int, total: int, base_lr: float, min_lr: float = 1e-4, power: float = 0.9) -> float:
    steps = max(total - 1, 1)
    return (base_lr - min_lr) * (1 - min(iteration, steps) / steps) ** power + min_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@dataclasses.dataclass
class Deadline:
    """``--max-minutes`` counted from the start of the run (loading the data and building the
    model count: a job killed at its limit loses everything since the last save), and judged one
    log window ahead: ``near`` is true when the next stretch of ``window_s`` would end past it, so the run
    saves before the limit rather than at the first check after it."""

    minutes: float | None
    started: float = dataclasses.field(default_factory=time.perf_counter)

    def near(self, window_s: float, now: float | None = None) -> bool:
        if self.minutes is None:
            return False
        now = time.perf_counter() if now is None else now
        return now + window_s > self.started + 60 * self.minutes
