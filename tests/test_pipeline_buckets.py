"""The batching input policy: keep-ratio resize to the test scale, pad into a few buckets."""

from __future__ import annotations

import numpy as np
import pytest

from model import DEFAULT_MODEL, get_config, list_configs
from model.pipeline.resize import rescale_size
from model.pipeline.buckets import InputPolicy
from model.pipeline.restore import restore_labels
from model.pipeline.errors import BadDimensions

CAMVID = InputPolicy.for_config(get_config(DEFAULT_MODEL))


def test_camvid_frames_are_not_padded_at_all():
    rgb = np.random.default_rng(0).integers(0, 256, (360, 480, 3), dtype=np.uint8)
    p = CAMVID.prepare(rgb)
    assert p.bucket == p.resized == p.original == (480, 360)
    assert np.array_equal(p.pixels, rgb)


@pytest.mark.parametrize("cfg", list_configs(), ids=lambda c: c.name)
def test_every_resized_size_lands_in_a_listed_bucket_that_holds_it(cfg):
    policy = InputPolicy.for_config(cfg)
    buckets = set(policy.all_buckets())
    assert len(buckets) <= 32 and policy.step % 8 == 0
    rng = np.random.default_rng(1)
    for w, h in [(1, 1), (33, 7000), (7000, 33), *rng.integers(2, 5000, (200, 2)).tolist()]:
        resized = rescale_size((w, h), cfg.test_scale)
        if min(resized) < 1:
            continue
        bucket = policy.bucket_for(resized)
        assert bucket in buckets
        assert resized[0] <= bucket[0] < resized[0] + policy.step and resized[1] <= bucket[1] < resized[1] + policy.step


def test_padding_is_the_mean_colour_and_restore_returns_the_original_size():
    rgb = np.full((100, 300, 3), 7, np.uint8)  # -> 480x160, bucket 480x192
    p = CAMVID.prepare(rgb)
    assert (p.resized, p.bucket) == ((480, 160), (480, 192))
    assert p.pixels.shape == (192, 480, 3)
    assert (p.pixels[:160] == 7).all() and (p.pixels[160:] == [124, 116, 104]).all()
    labels = np.zeros((192, 480), np.uint8)
    labels[160:] = 9  # padding region must not leak back
    labels[:, 240:] = 3
    out = restore_labels(labels, p)
    assert out.shape == (100, 300)
    assert set(np.unique(out)) == {0, 3} and (out[:, :150] == 0).all() and (out[:, 150:] == 3).all()


def test_portrait_images_use_the_portrait_bucket():
    p = CAMVID.prepare(np.zeros((480, 360, 3), np.uint8))
    assert p.bucket == (360, 480)


def test_absurd_aspect_ratio_is_refused():
    with pytest.raises(BadDimensions):
        CAMVID.prepare(np.zeros((1, 5000, 3), np.uint8))


def test_right_margin_is_padded_and_the_image_kept():
    rgb = np.full((360, 361, 3), 7, np.uint8)  # stays 361x360, bucket 384x360: a right margin only
    p = CAMVID.prepare(rgb)
    assert (p.resized, p.bucket) == ((361, 360), (384, 360))
    assert (p.pixels[:, :361] == 7).all() and (p.pixels[:, 361:] == [124, 116, 104]).all()
