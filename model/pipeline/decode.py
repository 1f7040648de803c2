"""Bytes -> HxWx3 uint8 RGB, the first step of the pipeline for the service, the CLIs and training.

`decode` is the checked entry for untrusted bytes: it reads the header first (format, size) so a
decompression bomb or an absurd size is refused before any pixel is decompressed, then decodes
through `load_image`, so the service sees exactly the pixels the CLI and training see (EXIF
orientation, every PIL mode to RGB). Animated images (APNG, animated WebP, multi-page TIFF) give
their first frame.
"""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadDimensions, CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage

ORIENTATION = 0x0112  # the EXIF tag
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
_MAGIC = {b"\xff\xd8\xff": "JPEG", b"\x89PNG\r\n\x1a\n": "PNG", b"BM": "BMP", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


def to_rgb(image: Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB from any PIL mode, upright per EXIF (as cv2.imread shows it)."""
    if image.getexif().get(ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit scans to 8 bits by their top byte, as cv2's IMREAD_COLOR does.
        arr = np.asarray(image, dtype=np.uint32) >> 8
        return np.repeat(np.clip(arr, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode == "F":
        arr = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGBA" if "transparency" in image.info else image.mode).convert("RGB")
    return np.asarray(image, dtype=np.uint8).copy()


def _complete_jpeg(data: bytes) -> bool:
    """Ends with the end-of-image marker (trailing NUL padding allowed). libjpeg pads a truncated
    stream with grey and only warns, so cv2 would serve it; such streams go to PIL, which refuses
    them."""
    return data.rstrip(b"\0").endswith(b"\xff\xd9")


def load_image(source: bytes | str | Path | Image.Image) -> np.ndarray:
    """HxWx3 uint8 RGB. Complete RGB and greyscale JPEGs go through cv2.imdecode: the pixels are
    PIL's (both are libjpeg-turbo with the same settings; tests check it, EXIF orientations
    included) without PIL's RGB -> numpy copy, which costs more than the decode itself.
    Everything else (CMYK, PNG, WebP, ...) goes through PIL."""
    if isinstance(source, Image.Image):
        return to_rgb(source)
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if image.format == "JPEG" and image.mode in ("RGB", "L") and _complete_jpeg(data):
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # applies EXIF orientation
            if bgr is not None:
                return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        return to_rgb(image)


def _claimed_format(data: bytes) -> str | None:
    """The supported format whose signature ``data`` starts with, if any."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


def probe(data: bytes, max_pixels: int) -> tuple[str, int, int]:
    """Return ``(format, width, height)`` from the header, refusing what we will not decode."""
    if not data:
        raise EmptyImage("the request carried no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            fmt, (width, height) = img.format, img.size
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(f"image has too many pixels: {exc}") from None
    except UnidentifiedImageError:
        if claimed := _claimed_format(data):  # right signature, unreadable header (e.g. 0 width)
            raise CorruptImage(f"{claimed} signature but an invalid header") from None
        raise UnsupportedImage(
            f"not a recognised image; send one of {', '.join(SUPPORTED_FORMATS)}"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CorruptImage(f"unreadable image header: {exc}") from None
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}")
    if width < 1 or height < 1:
        raise BadDimensions(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return fmt, width, height


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Checked decode to an ``HxWx3`` uint8 RGB array (first frame of animations)."""
    probe(data, max_pixels)  # our pixel limit, from the header, before anything is decompressed
    try:
        rgb = load_image(data)
    except Exception as exc:  # PIL raises OSError/ValueError/SyntaxError/struct.error/... on bad data
        raise CorruptImage(f"image data is truncated or corrupt: {exc}") from None
    return rgb

