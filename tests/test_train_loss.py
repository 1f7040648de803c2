"""Training loss, OHEM and the lr schedule against mmseg's and mmengine's own implementations."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmseg_ref import import_mmseg
from model.training.loss import LossConfig, median_frequency_weights, seg_loss
from model.training.schedule import poly_lr


def logits_and_label(seed: int, n: int = 2, c: int = 5, hw: tuple[int, int] = (12, 16)):
    g = torch.Generator().manual_seed(seed)
    logits, aux = torch.randn(n, c, *hw, generator=g) * 3, torch.randn(n, c, *hw, generator=g)
    label = torch.randint(0, c, (n, *hw), generator=g)
    label[torch.rand(n, *hw, generator=g) < 0.2] = 255
    return logits, aux, label


def test_decode_plus_aux_cross_entropy_matches_mmseg():
    import_mmseg()
    from mmseg.models.losses import CrossEntropyLoss

    logits, aux, label = logits_and_label(0)
    ours = seg_loss(logits, aux, label, LossConfig())
    decode = CrossEntropyLoss()(logits, label, ignore_index=255)
    auxiliary = CrossEntropyLoss(loss_weight=0.4)(aux, label, ignore_index=255)
    assert torch.allclose(ours["loss_decode"], decode) and torch.allclose(ours["loss_aux"], auxiliary)
    assert torch.allclose(ours["loss"], decode + auxiliary)
    # Ignored pixels count in mmseg's denominator (avg_non_ignore=False): not PyTorch's mean.
    assert not torch.allclose(ours["loss_decode"], torch.nn.functional.cross_entropy(logits, label, ignore_index=255))


def test_class_weighted_cross_entropy_matches_mmseg_and_torch():
    import_mmseg()
    from mmseg.models.losses import CrossEntropyLoss

    weights = (1.0, 2.0, 0.5, 1.5, 3.0)
    logits, aux, label = logits_and_label(2)
    full = label.clamp(max=4)  # mmseg 1.2.2 only runs class weights on fully labelled maps
    ours = seg_loss(logits, aux, full, LossConfig(class_weight=weights))
    assert torch.allclose(ours["loss_decode"], CrossEntropyLoss(class_weight=list(weights))(logits, full, ignore_index=255))
    ours = seg_loss(logits, aux, label, LossConfig(class_weight=weights))
    ref = torch.nn.functional.cross_entropy(logits, label, weight=torch.tensor(weights), ignore_index=255)
    assert torch.allclose(ours["loss_decode"], ref)


@pytest.mark.parametrize("thresh", [None, 0.7])
def test_ohem_matches_mmseg_pixel_sampler(thresh):
    import_mmseg()
    from mmseg.models.losses import CrossEntropyLoss
    from mmseg.structures.sampler import OHEMPixelSampler

    logits, aux, label = logits_and_label(1)
    min_kept = 50
    context = SimpleNamespace(ignore_index=255, loss_decode=CrossEntropyLoss())
    weight = OHEMPixelSampler(context, thresh=thresh, min_kept=min_kept).sample(logits, label[:, None])
    ref = CrossEntropyLoss()(logits, label, weight=weight, ignore_index=255)
    ours = seg_loss(logits, aux, label, LossConfig(ohem_min_kept=min_kept, ohem_thresh=thresh))
    assert torch.allclose(ours["loss_decode"], ref)
    plain = seg_loss(logits, aux, label, LossConfig())
    assert ours["loss_decode"] < plain["loss_decode"]  # some pixels were dropped
    assert torch.equal(ours["loss_aux"], plain["loss_aux"])  # OHEM is the decode head's only


def test_poly_lr_matches_mmengine():
    from mmengine.optim.scheduler import PolyLR

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = PolyLR(opt, eta_min=1e-4, power=0.9, begin=0, end=50, by_epoch=False)
    ref = []
    for _ in range(50):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    np.testing.assert_allclose([poly_lr(t, 50, 0.01) for t in range(50)], ref, rtol=1e-9)


def test_median_frequency_weights_favour_rare_classes():
    counts = torch.tensor([[900, 90, 10, 0], [1000, 1000, 100, 0]])  # class 3 absent
    w = median_frequency_weights(counts)
    freq = np.array([0.9, 0.09, 0.1])
    np.testing.assert_allclose(w[:3], np.median(freq) / freq)
    assert w[3] == 1.0
