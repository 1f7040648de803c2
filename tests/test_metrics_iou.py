"""IoU metrics against a brute-force numpy confusion matrix and against mmseg's IoUMetric."""

from __future__ import annotations

import numpy as np
import torch

from mmseg_ref import import_mmseg
from model.training.metrics import IoUAccumulator


def random_split(seed: int, num_classes: int = 6, n: int = 5):
    """Predictions/labels with ignored pixels, a class never labelled and one never present at all."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        hw = tuple(rng.integers(5, 40, size=2))
        label = rng.integers(0, num_classes - 2, hw).astype(np.uint8)  # classes 4, 5 never labelled
        label[rng.random(hw) < 0.15] = 255
        pred = rng.integers(0, num_classes - 1, hw).astype(np.uint8)  # class 5 never predicted
        agree = rng.random(hw) < 0.5
        pred[agree & (label != 255)] = label[agree & (label != 255)]
        pairs.append((pred, label))
    return pairs


def brute_force(pairs, num_classes: int):
    conf = np.zeros((num_classes, num_classes), np.int64)  # rows: label, cols: prediction
    for pred, label in pairs:
        for p, t in zip(pred.ravel(), label.ravel()):
            if t != 255:
                conf[t, p] += 1
    tp = np.diag(conf).astype(float)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = tp / union, tp / conf.sum(1)
    return tp.sum() / conf.sum(), iou, acc


def test_matches_brute_force_confusion_matrix():
    pairs = random_split(0)
    acc = IoUAccumulator(6)
    for pred, label in pairs:
        acc.update(pred, label)
    m = acc.compute()
    a_acc, iou, cls_acc = brute_force(pairs, 6)
    assert np.isclose(m.aAcc, a_acc)
    np.testing.assert_allclose(m.iou, iou, equal_nan=True)
    np.testing.assert_allclose(m.acc, cls_acc, equal_nan=True)
    assert np.isnan(m.iou[5]) and not np.isnan(m.iou[4]) and m.iou[4] == 0.0  # absent vs only predicted
    assert np.isclose(m.mIoU, np.nanmean(iou)) and np.isclose(m.mAcc, np.nanmean(cls_acc))


def test_areas_are_summed_over_the_split_not_averaged_per_image():
    big = (np.zeros((10, 10), np.uint8), np.zeros((10, 10), np.uint8))  # class 0: perfect, 100 px
    small = (np.ones((1, 2), np.uint8), np.array([[0, 1]], np.uint8))  # class 0 missed once
    acc = IoUAccumulator(2)
    for pred, label in (big, small):
        acc.update(torch.from_numpy(pred), torch.from_numpy(label))
    assert np.isclose(acc.compute().iou[0], 100 / 101)


def test_matches_mmseg_iou_metric():
    import_mmseg()
    from mmseg.evaluation.metrics import IoUMetric

    pairs = random_split(1)
    ours = IoUAccumulator(6)
    results = []
    for pred, label in pairs:
        ours.update(pred, label)
        results.append(IoUMetric.intersect_and_union(torch.from_numpy(pred).long(), torch.from_numpy(label).long(), 6, 255))
    totals = [sum(r[i] for r in results) for i in range(4)]
    ref = IoUMetric.total_area_to_metrics(*totals, metrics=["mIoU"])
    m = ours.compute()
    np.testing.assert_allclose(m.iou, ref["IoU"], equal_nan=True)
    np.testing.assert_allclose(m.acc, ref["Acc"], equal_nan=True)
    assert np.isclose(m.aAcc, float(ref["aAcc"]))
