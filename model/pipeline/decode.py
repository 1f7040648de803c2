"""Bytes -> HxWx3 uint8 RGB, the first step of the pipeline for the service, the CLIs and training.

`decode` is the checked entry for untrusted bytes: it reads the header first (format, size) so a
decompression bomb or an absurd size is refused before any pixel is decompressed, then decodes
through `load_image`, so the service sees exactly the pixels the CLI and training see (EXIF
orientation, every PIL mode to RGB). Animated images (APNG, animated WebP, multi-page TIFF) and
multi-picture JPEGs (MPO: what many phones and 3D cameras write) give their first frame.
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
# PIL's name for a multi-picture JPEG; its first frame is a plain JPEG at the start of the file.
JPEG_FORMATS = ("JPEG", "MPO")
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
        if image.format in JPEG_FORMATS and image.mode in ("RGB", "L") and _complete_jpeg(data):
            flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # PIL's reading of EXIF decides
            bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            if bgr is not None:
                return _oriented(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), image.getexif().get(ORIENTATION, 1))
        return to_rgb(image)


def _oriented(rgb: np.ndarray, orientation: int) -> np.ndarray:
    """``rgb`` turned upright for an EXIF orientation, as PIL's `exif_transpose` does it. One
    parser (PIL's) reads the tag for both decode paths: cv2's own reading differs from PIL's on
    corrupt EXIF entries, and the header size the service checks comes from PIL."""
    turns = {
        2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1), 7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
        8: lambda a: np.rot90(a, 1),
    }  # fmt: skip
    turn = turns.get(orientation)
    return rgb if turn is None else np.ascontiguousarray(turn(rgb))


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
            fmt, (width, height) = img.format, img.size  # an MPO's size is its first frame's
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
    if fmt in JPEG_FORMATS:
        fmt = "JPEG"  # we serve an MPO's first frame, a JPEG
    if fmt not in SUPPORTED_FORMATS:
        raise UnsupportedImage(f"{fmt} images are not supported; send one of {', '.join(SUPPORTED_FORMATS)}")
    if width < 1 or height < 1:
        raise BadDimensions(f"image has zero size ({width}x{height})")
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}")
    return fmt, width, height


def jpeg_draft_scale(size: tuple[int, int], fit: tuple[int, int]) -> int:
    """The DCT scaling (1, 2, 4 or 8) PIL's JPEG ``draft`` picks for an image of ``size`` decoded
    to no smaller than ``fit`` (both as stored, before EXIF orientation): the largest power of two
    that keeps both sides at least ``fit``'s."""
    ratio = min(size[0] // max(1, fit[0]), size[1] // max(1, fit[1]))
    return next(s for s in (8, 4, 2, 1) if s <= max(1, ratio))


def decode_scaled(data: bytes, max_pixels: int, fit: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """Like `decode`, but a JPEG at least twice ``fit`` (width, height, upright) in both
    dimensions is decoded straight to about that size by libjpeg's DCT scaling (PIL's ``draft``):
    a 40 Mpx photo costs the memory and time of a 1/4 .. 1/64 decode. Returns ``(rgb, size)``
    where ``size`` is the full upright (width, height) the image would decode to. The pixels
    differ slightly from a full decode then resize (DCT scaling is not a bilinear filter), so
    callers opt in. Other formats decode in full."""
    fmt, width, height = probe(data, max_pixels)
    if fmt == "JPEG":
        try:
            with Image.open(io.BytesIO(data)) as image:
                turned = image.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8)  # stored sideways
                stored_fit = fit[::-1] if turned else fit
                upright = (height, width) if turned else (width, height)
                if jpeg_draft_scale((width, height), stored_fit) > 1:
                    image.draft("RGB", stored_fit)
                    return to_rgb(image), upright
        except Exception as exc:
            raise CorruptImage(f"image data is truncated or corrupt: {exc}") from None
    rgb = decode(data, max_pixels)
    return rgb, (rgb.shape[1], rgb.shape[0])


def decode(data: bytes, max_pixels: int) -> np.ndarray:
    """Checked decode to an ``HxWx3`` uint8 RGB array (first frame of animations)."""
    probe(data, max_pixels)  # our pixel limit, from the header, before anything is decompressed
    try:
        rgb = load_image(data)
    except Exception as exc:  # PIL raises OSError/ValueError/SyntaxError/struct.error/... on bad data
        raise CorruptImage(f"image data is truncated or corrupt: {exc}") from None
    return rgb

