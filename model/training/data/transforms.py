"""mmseg's training pipeline as tensor ops that run where the data is (GPU or CPU worker).

RandomResize(scale, ratio_range=(0.5, 2.0), keep_ratio=True) -> RandomCrop(crop_size,
cat_max_ratio=0.75) -> RandomFlip(0.5) -> PhotoMetricDistortion -> normalise -> pad (image 0 after
normalising, label 255), as mmseg's pipeline plus its `SegDataPreProcessor`.

All randomness is drawn up front on the CPU (`sample`) from a `random.Random`, so a sample's
augmentation is a pure function of its seed: exact resume needs no RNG state, and the GPU path
never waits on the host for a random number. The one data-dependent choice, which of RandomCrop's
candidate crops passes `cat_max_ratio`, is computed on the device for a whole batch and read back
with a single synchronisation (`augment_batch`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ...configs import ModelConfig
from ...pipeline.resize import rescale_size
from .photometric import PhotometricParams, photometric_distortion, sample_photometric

CROP_TRIES = 10  # mmseg re-draws the crop up to 10 times, then keeps the 11th unchecked


@dataclass(frozen=True)
class AugmentParams:
    size: tuple[int, int]  # (h, w) after RandomResize
    crops: tuple[tuple[int, int], ...]  # candidate (top, left) offsets in mmseg's draw order
    flip: bool
    photometric: PhotometricParams | None


@dataclass(frozen=True)
class TrainPipeline:
    scale: tuple[int, int]  # (w, h) RandomResize base scale
    crop_size: tuple[int, int]  # (h, w)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    ratio_range: tuple[float, float] = (0.5, 2.0)
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    ignore_index: int = 255

    @classmethod
    def from_config(cls, cfg: ModelConfig, **overrides) -> TrainPipeline:
        base = dict(scale=cfg.train_scale, crop_size=cfg.crop_size, mean=cfg.mean, std=cfg.std)
        return cls(**{**base, "ignore_index": cfg.dataset.ignore_index, **overrides})

    def sample(self, rng: random.Random, image_hw: tuple[int, int]) -> AugmentParams:
        ratio = rng.random() * (self.ratio_range[1] - self.ratio_range[0]) + self.ratio_range[0]
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        w, h = rescale_size((image_hw[1], image_hw[0]), target)
        tries = CROP_TRIES + 1 if self.cat_max_ratio < 1 else 1
        mh, mw = max(h - self.crop_size[0], 0), max(w - self.crop_size[1], 0)
        crops = tuple((rng.randint(0, mh), rng.randint(0, mw)) for _ in range(tries))
        flip = rng.random() < self.flip_prob
        return AugmentParams((h, w), crops, flip, sample_photometric(rng) if self.photometric else None)

    def resize_and_choose(
        self, img: torch.Tensor, label: torch.Tensor, p: AugmentParams
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Resize (bilinear image, nearest label) and pick the crop: index tensor, not yet synced."""
        img = F.interpolate(img[None].float(), size=p.size, mode="bilinear", align_corners=False)[0]
        img = img.round_().clamp_(0, 255)
        label = F.interpolate(label[None, None].float(), size=p.size, mode="nearest")[0, 0].to(torch.uint8)
        if len(p.crops) == 1:
            return img, label, torch.zeros((), dtype=torch.long, device=img.device)
        # All candidate crops in one gather; candidate k's labels land in bins [256k, 256k + 256).
        ch, cw = min(self.crop_size[0], p.size[0]), min(self.crop_size[1], p.size[1])
        offsets = torch.tensor(p.crops, dtype=torch.long).to(img.device, non_blocking=True)
        rows = (offsets[:, 0, None] + torch.arange(ch, device=img.device))[:, :, None]
        cols = (offsets[:, 1, None] + torch.arange(cw, device=img.device))[:, None, :]
        binned = label[rows, cols].long() + 256 * torch.arange(len(p.crops), device=img.device).view(-1, 1, 1)
        counts = torch.bincount(binned.view(-1), minlength=256 * len(p.crops)).view(len(p.crops), 256)
        counts[:, self.ignore_index] = 0
        total = counts.sum(1)
        ok = (((counts > 0).sum(1) > 1) & (counts.max(1).values < self.cat_max_ratio * total))[:CROP_TRIES]
        choice = torch.where(ok.any(), ok.int().argmax(), torch.full_like(ok, CROP_TRIES, dtype=torch.long)[0])
        return img, label, choice

    def crop(self, img: torch.Tensor, label: torch.Tensor, p: AugmentParams, crop: int):
        """Crop and flip one sample, then pad it to the crop size (image 0, label ignore)."""
        (top, left), (ch, cw) = p.crops[crop], self.crop_size
        img, label = img[:, top : top + ch, left : left + cw], label[top : top + ch, left : left + cw]
        if p.flip:
            img, label = img.flip(-1), label.flip(-1)
        pad_h, pad_w = ch - img.shape[1], cw - img.shape[2]
        if pad_h or pad_w:
            img = F.pad(img, (0, pad_w, 0, pad_h), value=0.0)
            label = F.pad(label, (0, pad_w, 0, pad_h), value=self.ignore_index)
        return img, label

    def finish(self, imgs: torch.Tensor, params: list[AugmentParams]) -> torch.Tensor:
        """Photometric distortion and normalisation of the whole batch; padding stays exactly 0."""
        if self.photometric:
            imgs = photometric_distortion(imgs, [p.photometric for p in params])
        mean = torch.tensor(self.mean, device=imgs.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=imgs.device).view(1, 3, 1, 1)
        imgs = (imgs - mean) / std
        ch, cw = self.crop_size
        valid = [(min(ch, p.size[0]), min(cw, p.size[1])) for p in params]
        if any(v != (ch, cw) for v in valid):  # mmseg pads after normalising: padded pixels are 0
            hv, wv = torch.tensor(valid, device=imgs.device).unbind(1)
            inside = (torch.arange(ch, device=imgs.device).view(1, -1, 1) < hv.view(-1, 1, 1)) & (
                torch.arange(cw, device=imgs.device).view(1, 1, -1) < wv.view(-1, 1, 1)
            )
            imgs = imgs * inside[:, None]
        return imgs


def augment_batch(
    pipe: TrainPipeline, samples: list[tuple[torch.Tensor, torch.Tensor]], params: list[AugmentParams]
) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 3 x h x w float images and N x h x w uint8 labels; one host sync for all crop choices."""
    staged = [pipe.resize_and_choose(img, lbl, p) for (img, lbl), p in zip(samples, params)]
    choices = torch.stack([c for _, _, c in staged]).tolist()
    crops = [pipe.crop(img, lbl, p, c) for (img, lbl, _), p, c in zip(staged, params, choices)]
    imgs = torch.stack([c[0] for c in crops])
    return pipe.finish(imgs, params), torch.stack([c[1] for c in crops])
