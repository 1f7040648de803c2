"""Label maps -> what a user receives: palette PNG, colour overlay JPEG, run-length code, histogram.

One writer for the service and the CLI. The PNG's pixel values are the class indices and its
palette the dataset's colours, so it both shows in colour and reads back as labels.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Sequence

import numpy as np
from isal import isal_zlib
from PIL import Image


def _palette_bytes(palette: Sequence[Sequence[int]]) -> list[int]:
    flat = [int(c) for rgb in palette for c in rgb]
    return flat + [0] * (768 - len(flat))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(data, zlib.crc32(kind))  # no kind + data copy of the (large) IDAT
    return b"".join([struct.pack(">I", len(data)), kind, data, struct.pack(">I", crc)])


def encode_label_png(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> bytes:
    """Palette-mode PNG: pixel value = class index, colours = the dataset palette for viewers.

    Written directly rather than through PIL, for speed: every row uses PNG's "Up" filter
    (difference to the row above, all zeros where a row repeats, as label maps' rows mostly do),
    deflated by ISA-L at level 1 (faster than zlib's fastest setting, for a slightly larger
    stream: bench/RESULTS.md). Both release the GIL, so codec threads encode in parallel.
    """
    height, width = labels.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 2  # filter type "Up"; for the first row the row above counts as zeros
    rows[0, 1:] = labels[0]
    np.subtract(labels[1:], labels[:-1], out=rows[1:, 1:], dtype=np.uint8)  # modulo 256, as PNG wants
    idat = isal_zlib.compress(rows, 1)
    plte = bytes(_palette_bytes(palette)[: 3 * max(1, min(256, len(palette)))])
    return b"".join([
        b"\x89PNG\r\n\x1a\n",
        _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0)),  # 8-bit palette
        _png_chunk(b"PLTE", plte),
        _png_chunk(b"IDAT", idat),
        _png_chunk(b"IEND", b""),
    ])  # fmt: skip


def colorize(labels: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """H x W x 3 uint8 class colours; classes beyond the palette show black."""
    lut = np.zeros((256, 3), dtype=np.uint8)
    lut[: len(palette)] = np.asarray(palette, dtype=np.uint8)[:256]
    return lut[labels]


#: pixels blended at once: float32 temporaries of a whole 40 Mpx image would cost GBs
_BLEND_PIXELS = 1 << 18


def overlay(image: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5) -> np.ndarray:
    """RGB blend of the image and its class colours; `alpha` is the colours' weight. Blended in
    float32 a band of rows at a time, so the temporaries stay a few MB whatever the image size."""
    out = np.empty(image.shape[:2] + (3,), np.uint8)
    rows = max(1, _BLEND_PIXELS // max(1, image.shape[1]))
    for top in range(0, image.shape[0], rows):
        band = slice(top, top + rows)
        blend = image[band].astype(np.float32) * (1 - alpha) + colorize(labels[band], palette).astype(np.float32) * alpha
        out[band] = np.clip(blend + 0.5, 0, 255)
    return out


def encode_overlay_jpeg(
    rgb: np.ndarray, labels: np.ndarray, palette: Sequence[Sequence[int]], alpha: float = 0.5, quality: int = 85
) -> bytes:
    """JPEG of the image blended with the palette colours of its labels."""
    buf = io.BytesIO()
    Image.fromarray(overlay(rgb, labels, palette, alpha)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def class_histogram(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pixel count per class index (length ``num_classes``). Counted a band at a time: bincount
    converts its input to int64, 8 bytes per pixel of a whole image at once."""
    counts = np.zeros(max(num_classes, 256), np.int64)
    flat = labels.reshape(-1)
    for start in range(0, flat.size, _BLEND_PIXELS):
        counts += np.bincount(flat[start : start + _BLEND_PIXELS], minlength=counts.size)
    return counts[:num_classes]


def encode_rle(labels: np.ndarray) -> dict:
    """Row-major run-length encoding: ``values[i]`` repeated ``counts[i]`` times."""
    flat = labels.ravel()
    starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
    counts = np.diff(np.r_[starts, flat.size])
    return {
        "encoding": "rle",
        "order": "row-major",
        "size": [int(labels.shape[0]), int(labels.shape[1])],
        "values": flat[starts].tolist(),
        "counts": counts.tolist(),
    }
