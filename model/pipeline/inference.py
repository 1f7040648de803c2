"""Whole-image, sliding-window and multi-scale + flip inference, as mmseg's EncoderDecoder does it.

`Segmenter.predict` takes RGB arrays of any size and returns uint8 label maps at their original
size: test resize -> network (whole or slide) -> bilinear resize of the logits back -> argmax
(`restore_logits`, the mmseg-exact restore mode).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..network import DeepLabV3Plus
from ..precision import Precision
from .normalize import normalize
from .resize import rescale_size, resize_image
from .restore import restore_logits

TTA_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16)


def slide_logits(net: DeepLabV3Plus, x: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """mmseg's slide_inference: overlapping crops, logits averaged where they overlap."""
    (h_crop, w_crop), (h_stride, w_stride) = crop, stride
    n, _, h, w = x.shape
    h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
    preds = x.new_zeros((n, net.config.num_classes, h, w), dtype=torch.float32)
    count = x.new_zeros((1, 1, h, w), dtype=torch.float32)
    for hi in range(h_grids):
        for wi in range(w_grids):
            y2, x2 = min(hi * h_stride + h_crop, h), min(wi * w_stride + w_crop, w)
            y1, x1 = max(y2 - h_crop, 0), max(x2 - w_crop, 0)
            preds[:, :, y1:y2, x1:x2] += net(x[:, :, y1:y2, x1:x2]).float()
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


class Segmenter:
    """Runs a loaded model on RGB images with the config's test pipeline."""

    def __init__(self, net: DeepLabV3Plus, device: str | torch.device = "cpu", precision: str = "fp32", tta: bool = False):
        self.precision = Precision.parse(precision, PRECISIONS, "Segmenter")
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.config = net.config
        self.dtype = self.precision.dtype
        self.tta = tta

    def _network_logits(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32):
            if cfg.inference == "slide":
                return slide_logits(self.net, x, cfg.slide_crop, cfg.slide_stride)
            return self.net(x).float()

    def _logits_at(self, images: np.ndarray, size: tuple[int, int], out_hw: tuple[int, int], flip: bool) -> torch.Tensor:
        """Logits for a same-size uint8 batch resized to `size` (w, h), returned at `out_hw`."""
        resized = np.stack([resize_image(im, size) for im in images])
        x = normalize(torch.from_numpy(resized).to(self.device), self.config)
        if flip:
            x = x.flip(-1)
        logits = self._network_logits(x)
        if flip:
            logits = logits.flip(-1)
        return restore_logits(logits, out_hw, self.config.head.align_corners)

    @torch.inference_mode()
    def predict_logits(self, images: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Per image: C x H x W scores at its original size (logits, or mean softmax with TTA)."""
        out: list[torch.Tensor | None] = [None] * len(images)
        for shape, idxs in _group_by_shape(images).items():
            batch = np.stack([images[i] for i in idxs])
            h, w = shape[:2]
            if not self.tta:
                size = rescale_size((w, h), self.config.test_scale)
                scores = self._logits_at(batch, size, (h, w), flip=False)
            else:
                scores = sum(
                    self._logits_at(batch, rescale_size((w, h), r), (h, w), flip).softmax(dim=1)
                    for r in TTA_RATIOS
                    for flip in (False, True)
                ) / (2 * len(TTA_RATIOS))
            for j, i in enumerate(idxs):
                out[i] = scores[j]
        return out

    def predict(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [s.argmax(dim=0).to(torch.uint8).cpu().numpy() for s in self.predict_logits(images)]


def _group_by_shape(images: Sequence[np.ndarray]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    return groups

