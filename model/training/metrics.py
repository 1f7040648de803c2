"""mmseg's IoUMetric: per-class areas summed over a whole split, then aAcc, IoU, Acc.

Areas are accumulated image by image (`IoUAccumulator.update`) and only divided at the end, so a
class's IoU is its total intersection over its total union across the split, not a mean of
per-image IoUs. Pixels whose label is the ignore index count nowhere; a class with no union
(absent from both labels and predictions) has IoU NaN and drops out of the mean, as in mmseg.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def intersect_and_union(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255):
    """Per-class (intersection, union, predicted area, label area) of one image, as int64 tensors."""
    keep = label != ignore_index
    pred, label = pred[keep].long(), label[keep].long()
    hit = pred[pred == label]

    def area(x: torch.Tensor) -> torch.Tensor:
        # Values outside [0, num_classes) fall out, as with mmseg's torch.histc.
        x = x[(x >= 0) & (x < num_classes)]
        return torch.bincount(x, minlength=num_classes)[:num_classes]

    a_hit, a_pred, a_label = area(hit), area(pred), area(label)
    return a_hit, a_pred + a_label - a_hit, a_pred, a_label


@dataclass
class SegMetrics:
    aAcc: float
    mIoU: float
    mAcc: float
    iou: list[float]  # per class, NaN where the class has no union
    acc: list[float]  # per class, NaN where the class has no labelled pixel

    def as_dict(self, classes: tuple[str, ...] | list[str]) -> dict:
        """Percentages, NaN as None, for JSON logs and model cards."""

        def pct(x: float) -> float | None:
            return None if np.isnan(x) else round(100 * x, 2)

        return {
            "aAcc": pct(self.aAcc),
            "mIoU": pct(self.mIoU),
            "mAcc": pct(self.mAcc),
            "per_class": {c: {"IoU": pct(i), "Acc": pct(a)} for c, i, a in zip(classes, self.iou, self.acc)},
        }

    def table(self, classes: tuple[str, ...] | list[str]) -> str:
        d = self.as_dict(classes)

        def show(x: float | None) -> str:
            return "nan" if x is None else f"{x:.2f}"

        width = max(len("Class"), *(len(c) for c in classes))
        rows = [f"| {'Class':<{width}} |   IoU  |   Acc  |", f"|{'-' * (width + 2)}|--------|--------|"]
        rows += [f"| {c:<{width}} | {show(v['IoU']):>6} | {show(v['Acc']):>6} |" for c, v in d["per_class"].items()]
        rows.append(f"aAcc {show(d['aAcc'])}  mIoU {show(d['mIoU'])}  mAcc {show(d['mAcc'])}")
        return "\n".join(rows)


class IoUAccumulator:
    """Sums per-class areas over a split; `compute()` gives mmseg's summary."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.areas = torch.zeros(4, num_classes, dtype=torch.float64)  # hit, union, pred, label

    def update(self, pred: torch.Tensor | np.ndarray, label: torch.Tensor | np.ndarray) -> None:
        pred, label = torch.as_tensor(pred), torch.as_tensor(label).to(pred.device)
        if pred.shape != label.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and label {tuple(label.shape)} differ in shape")
        parts = intersect_and_union(pred, label, self.num_classes, self.ignore_index)
        self.areas += torch.stack(parts).cpu().double()

    def compute(self) -> SegMetrics:
        hit, union, _, label = self.areas.numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            iou, acc = hit / union, hit / label
            a_acc = hit.sum() / label.sum()
        iou[union == 0] = np.nan
        acc[label == 0] = np.nan
        return SegMetrics(float(a_acc), _nanmean(iou), _nanmean(acc), iou.tolist(), acc.tolist())


def _nanmean(x: np.ndarray) -> float:
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")
