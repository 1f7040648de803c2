"""The model's input policy for batching: resize to the config's test scale, pad into a bucket.

mmseg's test pipeline resizes each image keeping its aspect ratio until it fits the config's
``test_scale`` box (long side <= long bound, short side <= short bound) and runs it alone. To batch
images of different sizes we pad each resized image into a *bucket*: its width and height rounded
up to a multiple of ``step`` (1/8 of the long bound, a multiple of the network's output stride 8)
but never past the box. The keep-ratio rule always scales an image until one side touches the box,
so there are only a few buckets per orientation, batches only mix images of the same bucket and
stay dense, and padding wastes at most one step per side. Padding uses the normalisation mean,
which normalises to ~0, the value mmseg pads with after normalising. An image whose resized size
is already a bucket (e.g. every 480x360 CamVid frame) is not padded at all and gives exactly the
result of running the model on it alone.

After inference `model.pipeline.restore.restore_labels` brings the label map back to the
original size (one of the two restore modes documented there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .errors import BadDimensions
from .resize import rescale_size, resize_image

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Prepared:
    """An image ready for the batcher: ``pixels`` has the bucket's shape."""

    pixels: np.ndarray  # bucket_h x bucket_w x 3 uint8
    bucket: Size
    resized: Size
    original: Size


@dataclass(frozen=True)
class InputPolicy:
    test_scale: Size
    pad_rgb: tuple[int, int, int]

    @classmethod
    def for_config(cls, cfg) -> InputPolicy:
        return cls(tuple(cfg.test_scale), tuple(int(round(m)) for m in cfg.mean))

    @property
    def step(self) -> int:
        return 8 * math.ceil(max(self.test_scale) / 64)

    def _box(self, size: Size) -> Size:
        long_, short = max(self.test_scale), min(self.test_scale)
        return (long_, short) if size[0] >= size[1] else (short, long_)

    def bucket_for(self, resized: Size) -> Size:
        box = self._box(resized)
        return tuple(min(bound, self.step * math.ceil(side / self.step)) for side, bound in zip(resized, box))

    def full_buckets(self) -> list[Size]:
        """The landscape and portrait box itself: what most real images land in."""
        long_, short = max(self.test_scale), min(self.test_scale)
        return [(long_, short)] if long_ == short else [(long_, short), (short, long_)]

    def all_buckets(self) -> list[Size]:
        """Every bucket a resized image can land in (one side on the box, the other stepped)."""
        found = set()
        for box in self.full_buckets():
            for free in range(2):
                for side in range(self.step, box[free] + self.step, self.step):
                    size = list(box)
                    size[free] = min(side, box[free])
                    if self._box(tuple(size)) == box:  # still this orientation
                        found.add(self.bucket_for(tuple(size)))
        return sorted(found)

    def warm_up_shapes(self, max_batch_size: int, per_batch_size: bool) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """``(tuned, untuned)`` batch shapes ``(n, height, width)`` to run before serving. For an
        engine that specialises per shape (``per_batch_size``): the full buckets at the max batch
        size with per-shape tuning (what a loaded server runs), at the other ``batch_ladder`` sizes
        without it (a batch in between runs padded to the next one); the other buckets are left to
        their first use, so start-up does not grow with them or with the max batch size.
        Otherwise one single-image batch per full bucket pays the one-time initialisation."""
        main = self.full_buckets()
        if not per_batch_size:
            return [(1, h, w) for w, h in main], []
        smaller = batch_ladder(max_batch_size)[:-1]
        return [(max_batch_size, h, w) for w, h in main], [(n, h, w) for w, h in main for n in smaller]

    def prepare(self, rgb: np.ndarray) -> Prepared:
        height, width = rgb.shape[:2]
        resized = rescale_size((width, height), self.test_scale)
        if min(resized) < 1:
            raise BadDimensions(f"a {width}x{height} image is too elongated: it resizes to {resized}")
        bucket = self.bucket_for(resized)
        pixels = np.empty((bucket[1], bucket[0], 3), np.uint8)
        pixels[: resized[1], : resized[0]] = resize_image(rgb, resized)
        # pad only the margins: filling the whole bucket first was most of the CPU time besides
        # decoding (bench/RESULTS.md)
        pixels[: resized[1], resized[0] :] = self.pad_rgb
        pixels[resized[1] :] = self.pad_rgb
        return Prepared(pixels, bucket, resized, (width, height))


def batch_ladder(max_batch_size: int) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ... up to ``max_batch_size`` (always included): batch
    sizes at most 1.5x apart, so padding a batch up to the next one wastes at most a third, while
    start-up tunes and captures O(log max) shapes instead of max (bench/RESULTS.md)."""
    sizes, n = [], 1
    while n < max_batch_size:
        sizes.append(n)
        n = n + 1 if n < 4 else (n * 3 // 2 if n & (n - 1) == 0 else n * 4 // 3)
    return [*sizes, max_batch_size]
