"""Segmenter against mmseg's own inference (test pipeline, whole and slide), TTA and batching."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from helpers import randomize
from mmseg_ref import import_mmseg, load_mmseg_config
from model import build_model, get_config
from model.pipeline import Segmenter

WHOLE = "deeplabv3plus_r18-d8_4xb4-80k_potsdam-512x512"
SLIDE = "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-769x769"


def mmseg_inference_model(name: str, test_scale, slide=None):
    """mmseg's `init_model` + weights; its pipeline shrunk so the test stays fast on CPU."""
    import_mmseg()
    from mmseg.apis import init_model

    cfg = load_mmseg_config(name)
    cfg.model.pretrained = None
    cfg.model.backbone.init_cfg = None
    for part in ("backbone", "decode_head", "auxiliary_head"):
        cfg.model[part].norm_cfg = dict(type="BN", requires_grad=True)
    next(t for t in cfg.test_pipeline if t["type"] == "Resize")["scale"] = test_scale
    if slide:
        cfg.model.test_cfg = dict(mode="slide", crop_size=slide[0], stride=slide[1])
    ref = init_model(cfg, None, device="cpu")
    ref.load_state_dict(randomize(ref.state_dict(), seed=5))
    return ref


@pytest.mark.parametrize(
    "name,slide", [(WHOLE, None), (SLIDE, ((64, 64), (40, 40)))], ids=["whole", "slide"]
)
def test_predict_equals_mmseg_inference_model(name, slide):
    scale = (200, 100)
    ref = mmseg_inference_model(name, scale, slide)
    from mmseg.apis import inference_model
    cfg = dataclasses.replace(get_config(name), test_scale=scale)
    if slide:
        cfg = dataclasses.replace(cfg, slide_crop=slide[0], slide_stride=slide[1])
    net = build_model(cfg).eval()
    net.load_state_dict(ref.state_dict())
    segmenter = Segmenter(net)
    image = np.random.RandomState(0).randint(0, 255, (75, 131, 3), dtype=np.uint8)
    result = inference_model(ref, np.ascontiguousarray(image[..., ::-1]))  # mmseg reads BGR
    logits = segmenter.predict_logits([image])[0]
    assert ((logits - result.seg_logits.data).norm() / result.seg_logits.data.norm()).item() < 1e-4
    labels = segmenter.predict([image])[0]
    assert labels.dtype == np.uint8 and labels.shape == (75, 131)
    assert (labels == result.pred_sem_seg.data[0].numpy()).mean() > 0.999


def mmseg_tta(ref, image: np.ndarray):
    """mmseg's own multi-scale + flip: its config's `tta_pipeline` (ratios 0.5..1.75, flip) and
    `SegTTAModel`. Returns its labels and the mean softmax over its per-augmentation outputs."""
    from mmcv.transforms import Compose
    from mmseg.registry import MODELS

    steps = ref.cfg.tta_pipeline.copy()
    steps[0] = {"type": "LoadImageFromNDArray"}
    steps[1]["transforms"] = [t for t in steps[1]["transforms"] if t[0]["type"] != "LoadAnnotations"]
    augmented = Compose(steps)({"img": np.ascontiguousarray(image[..., ::-1])})  # mmseg reads BGR
    batches = {key: [[item] for item in items] for key, items in augmented.items()}
    assert len(batches["inputs"]) == 12
    labels = MODELS.build({"type": "SegTTAModel", "module": ref}).test_step(batches)[0].pred_sem_seg.data[0]
    outputs = [ref.test_step({key: batches[key][i] for key in batches})[0] for i in range(12)]
    probabilities = sum(out.seg_logits.data.softmax(dim=0) for out in outputs) / 12
    return labels.numpy(), probabilities


def test_tta_equals_mmseg_seg_tta_model():
    """Odd sizes, so each ratio exercises mmcv's rounding (70 x 0.75 = 52.5 -> 53)."""
    ref = mmseg_inference_model(WHOLE, (64, 48))
    net = build_model(get_config(WHOLE)).eval()
    net.load_state_dict(ref.state_dict())
    image = np.random.RandomState(4).randint(0, 255, (50, 70, 3), dtype=np.uint8)
    ref_labels, ref_probabilities = mmseg_tta(ref, image)
    probabilities = Segmenter(net, tta=True).predict_logits([image])[0]
    assert probabilities.shape == ref_probabilities.shape == (6, 50, 70)
    assert (probabilities - ref_probabilities).abs().max().item() < 1e-6  # 6e-8 measured
    margin = ref_probabilities.topk(2, dim=0).values.diff(dim=0).abs()[0]
    decided = (margin > 1e-4).numpy()  # elsewhere the two may round a tie differently
    labels = Segmenter(net, tta=True).predict([image])[0]
    assert decided.mean() > 0.99 and np.array_equal(labels[decided], ref_labels[decided])


def small_net(name=WHOLE, **changes):
    cfg = dataclasses.replace(get_config(name), test_scale=(96, 64), **changes)
    net = build_model(cfg, with_auxiliary=False).eval()
    net.load_state_dict(randomize(net.state_dict(), seed=2))
    return net


def test_slide_equals_whole_when_one_window_covers_the_image():
    image = np.random.RandomState(1).randint(0, 255, (64, 96, 3), dtype=np.uint8)
    whole = Segmenter(small_net()).predict_logits([image])[0]
    slide = Segmenter(small_net(inference="slide", slide_crop=(64, 96), slide_stride=(32, 32))).predict_logits([image])[0]
    assert torch.allclose(whole, slide, atol=1e-5)


def test_slide_averages_overlapping_windows():
    net = small_net(inference="slide", slide_crop=(48, 48), slide_stride=(32, 32))
    x = torch.randn(1, 3, 64, 96)
    from model.pipeline.inference import slide_logits

    with torch.no_grad():
        got = slide_logits(net, x, (48, 48), (32, 32))
        # Columns 0-15 are only covered by the first window; the middle by two.
        first = net(x[:, :, 0:48, 0:48])
        assert torch.allclose(got[:, :, :16, :16], first[:, :, :16, :16], atol=1e-5)
        second = net(x[:, :, 0:48, 32:80])
        mid = (first[:, :, :16, 32:48] + second[:, :, :16, 0:16]) / 2
        assert torch.allclose(got[:, :, :16, 32:48], mid, atol=1e-5)


def test_tta_returns_probabilities_at_original_size():
    image = np.random.RandomState(2).randint(0, 255, (50, 70, 3), dtype=np.uint8)
    scores = Segmenter(small_net(), tta=True).predict_logits([image])[0]
    assert scores.shape == (6, 50, 70)
    assert torch.allclose(scores.sum(0), torch.ones(50, 70), atol=1e-4)
    labels = Segmenter(small_net(), tta=True).predict([image])[0]
    assert labels.shape == (50, 70)


def test_batch_of_mixed_sizes_equals_one_by_one():
    rng = np.random.RandomState(3)
    images = [rng.randint(0, 255, s, dtype=np.uint8) for s in [(64, 96, 3), (40, 33, 3), (64, 96, 3)]]
    seg = Segmenter(small_net())
    together = seg.predict(images)
    for image, labels in zip(images, together):
        assert labels.shape == image.shape[:2]
        assert np.array_equal(labels, seg.predict([image])[0])


def test_unknown_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        Segmenter(small_net(), precision="int3")
