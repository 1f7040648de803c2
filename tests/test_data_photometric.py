"""PhotoMetricDistortion as batched tensor ops against OpenCV's HSV and mmseg's own transform."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from mmseg_ref import import_mmseg
from model.training.data.photometric import PhotometricParams, hsv_to_rgb, photometric_distortion, rgb_to_hsv

NONE = PhotometricParams(None, None, True, None, None)


def random_rgb(seed: int, hw: tuple[int, int] = (48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*hw, 3), dtype=np.uint8)


def as_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float()


def test_hsv_conversions_match_opencv_8bit():
    img = random_rgb(0)
    ref = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(int)
    ours = rgb_to_hsv(as_tensor(img)).permute(1, 2, 0).numpy().astype(int)
    dh = np.abs(ours[..., 0] - ref[..., 0])
    assert np.minimum(dh, 180 - dh).max() <= 1 and np.abs(ours[..., 1] - ref[..., 1]).max() <= 1
    assert (ours[..., 2] == ref[..., 2]).all()
    back_ref = cv2.cvtColor(ref.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(int)
    back = hsv_to_rgb(torch.from_numpy(ref).permute(2, 0, 1).float()).permute(1, 2, 0).numpy().astype(int)
    assert np.abs(back - back_ref).max() <= 1 and np.abs(back - back_ref).mean() < 0.02


class ScriptedRandom:
    """Stands in for numpy.random inside mmseg's transform module: replays chosen draws."""

    def __init__(self, draws: list):
        self.draws = list(draws)

    def randint(self, *args):
        return self.draws.pop(0)

    def uniform(self, *args):
        return self.draws.pop(0)


def mmseg_draws(p: PhotometricParams) -> list:
    contrast = [int(p.contrast is not None)] + ([p.contrast] if p.contrast is not None else [])
    draws = [int(p.brightness is not None)] + ([p.brightness] if p.brightness is not None else [])
    draws.append(int(p.contrast_first))
    draws += contrast if p.contrast_first else []
    draws += [int(p.saturation is not None)] + ([p.saturation] if p.saturation is not None else [])
    draws += [int(p.hue is not None)] + ([p.hue] if p.hue is not None else [])
    return draws + ([] if p.contrast_first else contrast)


CASES = [
    PhotometricParams(17.3, 1.31, True, 0.62, -11),
    PhotometricParams(-25.0, 0.7, False, 1.4, 17),
    PhotometricParams(None, 1.2, False, None, 5),
    PhotometricParams(8.0, None, True, 1.1, None),
]


@pytest.mark.parametrize("params", CASES)
def test_matches_mmseg_photometric_distortion(monkeypatch, params):
    import_mmseg()
    import mmseg.datasets.transforms.transforms as T

    img = random_rgb(1)
    monkeypatch.setattr(T, "random", ScriptedRandom(mmseg_draws(params)))
    ref = T.PhotoMetricDistortion().transform({"img": img[:, :, ::-1].copy()})["img"][:, :, ::-1].astype(int)
    ours = photometric_distortion(as_tensor(img)[None], [params])[0].permute(1, 2, 0).numpy().astype(int)
    diff = np.abs(ours - ref)
    # Each HSV round trip may land one level off where OpenCV's vector path and scalar tail round
    # differently; a wrong formula, order or parameter moves most pixels by many levels.
    assert diff.max() <= 3 and diff.mean() < 0.25, (diff.max(), diff.mean())


def test_samples_that_skip_every_step_stay_exact_in_a_mixed_batch():
    imgs = torch.stack([as_tensor(random_rgb(s)) for s in (2, 3, 4)])
    out = photometric_distortion(imgs, [CASES[0], NONE, CASES[1]])
    assert torch.equal(out[1], imgs[1])
    assert not torch.equal(out[0], imgs[0]) and not torch.equal(out[2], imgs[2])
    # Each distorted sample is what it would be alone: per-sample parameters do not leak.
    assert torch.equal(out[2], photometric_distortion(imgs[2:3], [CASES[1]])[0])
