"""Decoding every image mode to RGB, and mmcv's resize rules."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from model.pipeline.decode import load_image, to_rgb
from model.pipeline.resize import rescale_size, resize_image

RNG = np.random.RandomState(0)
RGB = RNG.randint(0, 255, (30, 40, 3), dtype=np.uint8)


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_rgb_png_round_trips_exactly():
    assert np.array_equal(load_image(encode(Image.fromarray(RGB), "PNG")), RGB)


def test_grayscale_becomes_three_equal_channels():
    gray = RGB[..., 0]
    out = load_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert out.shape == (30, 40, 3) and all(np.array_equal(out[..., c], gray) for c in range(3))


def test_rgba_drops_alpha():
    rgba = np.dstack([RGB, np.full((30, 40), 7, np.uint8)])
    assert np.array_equal(load_image(encode(Image.fromarray(rgba, "RGBA"), "PNG")), RGB)


def test_palette_image_expands_colours():
    p = Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    expected = np.asarray(p.convert("RGB"))
    assert np.array_equal(load_image(encode(p, "PNG")), expected)


def test_sixteen_bit_png_keeps_the_top_byte():
    arr16 = (RGB[..., 0].astype(np.uint16) << 8) | 0xAB
    out = load_image(encode(Image.fromarray(arr16), "PNG"))
    assert np.array_equal(out[..., 1], RGB[..., 0])


def rgb_of_cmyk(cmyk: np.ndarray) -> np.ndarray:
    """The naive conversion PIL documents, in numpy: R = (255 - K) * (255 - C) / 255, rounded
    (never a half: 255 is odd), G and B likewise."""
    cmyk = cmyk.astype(np.int64)
    not_k = 255 - cmyk[..., 3:]
    return (not_k - np.rint(cmyk[..., :3] * not_k / 255)).astype(np.uint8)


def test_cmyk_jpeg_decodes_to_rgb():
    """A smooth CMYK photo with real black ink: exactly the conversion of the decoded ink planes,
    and within JPEG's loss (3 grey levels at most, 0.32 on average measured) of the original."""
    ink = np.random.default_rng(0).integers(0, 256, (4, 4, 4), dtype=np.uint8)
    cmyk = np.asarray(Image.fromarray(ink, "CMYK").resize((40, 30), Image.BILINEAR))
    data = encode(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    out = load_image(data)
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    decoded_ink = np.asarray(Image.open(io.BytesIO(data)))
    assert decoded_ink.shape == (30, 40, 4)
    assert np.array_equal(out, rgb_of_cmyk(decoded_ink))
    error = np.abs(out.astype(int) - rgb_of_cmyk(cmyk).astype(int))
    assert error.max() <= 6 and error.mean() < 1


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    out = load_image(encode(Image.fromarray(RGB), "JPEG", exif=exif, quality=95))
    assert out.shape == (40, 30, 3)


@pytest.mark.parametrize("size", [(2048, 1024), (480, 360), (97, 131), (1, 5000), (5000, 1)])
@pytest.mark.parametrize("scale", [(2048, 1024), (2048, 512), (520, 520), (2049, 1025)])
def test_rescale_size_matches_mmcv(size, scale):
    import mmcv

    assert rescale_size(size, scale) == mmcv.rescale_size(size, scale)


def test_resize_matches_mmcv_imrescale():
    import mmcv

    image = RNG.randint(0, 255, (75, 131, 3), dtype=np.uint8)
    expected = mmcv.imrescale(image, (200, 100), interpolation="bilinear")
    got = resize_image(image, rescale_size((131, 75), (200, 100)))
    assert np.array_equal(got, expected)


def _pil_only(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return to_rgb(image)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_jpeg_fast_path_gives_pils_pixels(orientation, mode):
    """cv2's JPEG decode (the fast path) against PIL's, for every EXIF orientation."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    photo = (RNG.rand(37, 53, 3) * 40 + np.linspace(0, 200, 53)[None, :, None]).astype(np.uint8)
    data = encode(Image.fromarray(photo).convert(mode), "JPEG", exif=exif, quality=90)
    assert np.array_equal(load_image(data), _pil_only(data))


def test_truncated_jpeg_is_refused_not_padded():
    data = encode(Image.fromarray(RGB), "JPEG", quality=95)
    with pytest.raises(OSError):
        load_image(data[: len(data) * 2 // 3])


def test_jpeg_with_trailing_bytes_still_decodes():
    data = encode(Image.fromarray(RGB), "JPEG", quality=95)
    assert np.array_equal(load_image(data + b"camera trailer"), _pil_only(data))


def test_camvid_photos_decode_to_pils_pixels(camvid_dir):
    for path in sorted((camvid_dir / "images" / "val").glob("*"))[:4]:
        assert np.array_equal(load_image(path), _pil_only(path.read_bytes()))
