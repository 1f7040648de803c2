"""Image decoding with header checks, and the response encodings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from helpers import image_bytes, png_claiming
from model.pipeline import decode as codec_decode, render
from model.pipeline.errors import CorruptImage, EmptyImage, ImageTooLarge, UnsupportedImage

PALETTE = [(128, 128, 128), (128, 0, 0), (0, 0, 255)]


RGB = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt):
    data = image_bytes(RGB, fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert codec_decode.probe(data, 10_000) == (fmt, 30, 20)
    assert np.array_equal(codec_decode.decode(data, 10_000), RGB)


def test_jpeg_decodes_to_rgb_of_the_original_size():
    data = image_bytes(RGB, "JPEG", quality=95)
    out = codec_decode.decode(data, 10_000)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))


def multi_picture_jpeg(first: np.ndarray, second: np.ndarray) -> bytes:
    """An MPO file, as many phones and 3D cameras write: JPEG frames one after another."""
    buf = io.BytesIO()
    Image.fromarray(first).save(buf, format="MPO", save_all=True, append_images=[Image.fromarray(second)], quality=95)
    return buf.getvalue()


def test_multi_picture_jpeg_serves_its_first_frame():
    second = np.full((40, 50, 3), 200, np.uint8)  # bigger than the first: its pixels are never read
    data = multi_picture_jpeg(RGB, second)
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "MPO" and img.n_frames == 2
        first = np.asarray(img.convert("RGB"))
    assert codec_decode.probe(data, 600) == ("JPEG", 30, 20)
    out = codec_decode.decode(data, 600)  # the limit holds for the first frame (600 px), not the 2,000 px second
    assert np.array_equal(out, first)
    assert np.array_equal(out, codec_decode.decode(image_bytes(RGB, "JPEG", quality=95), 600))
    with pytest.raises(ImageTooLarge):
        codec_decode.decode(data, 599)
    with pytest.raises(CorruptImage):
        codec_decode.decode(data[:300], 600)  # cut inside the first frame


def test_exif_orientation_is_applied():
    img = Image.fromarray(RGB)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif, quality=95)
    assert codec_decode.decode(buf.getvalue(), 10_000).shape == (30, 20, 3)


def test_grey_and_palette_images_become_rgb():
    grey = image_bytes(RGB[..., 0], "PNG")
    out = codec_decode.decode(grey, 10_000)
    assert out.shape == (20, 30, 3) and np.array_equal(out[..., 0], RGB[..., 0])
    pal = Image.fromarray(RGB).convert("P")
    buf = io.BytesIO()
    pal.save(buf, format="PNG")
    assert codec_decode.decode(buf.getvalue(), 10_000).shape == (20, 30, 3)


@pytest.mark.parametrize(
    "data,error",
    [
        (b"", EmptyImage),
        (b"definitely not an image", UnsupportedImage),
        (image_bytes(RGB, "GIF"), UnsupportedImage),
        (image_bytes(RGB, "JPEG")[:200], CorruptImage),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, CorruptImage),
        (image_bytes(RGB, "PNG"), ImageTooLarge),  # 600 px over a 599 px limit
    ],
)
def test_refusals(data, error):
    with pytest.raises(error):
        codec_decode.decode(data, 599)


def test_pixel_limits_are_checked_from_the_header_before_decoding():
    with pytest.raises(ImageTooLarge, match="limit is 40000000"):
        codec_decode.decode(png_claiming(8000, 8000), 40_000_000)  # ours: 64 Mpx > 40 Mpx
    with pytest.raises(ImageTooLarge, match="decompression bomb"):
        codec_decode.decode(png_claiming(100_000, 100_000), 10**12)  # PIL's own guard still applies
    assert codec_decode.probe(png_claiming(6000, 6000), 40_000_000) == ("PNG", 6000, 6000)


def test_zero_width_header_is_corrupt():
    with pytest.raises(CorruptImage):
        codec_decode.decode(png_claiming(0, 10), 10_000)


def test_label_png_round_trips_with_palette():
    labels = np.random.default_rng(1).integers(0, 3, (7, 9), dtype=np.uint8)
    img = Image.open(io.BytesIO(render.encode_label_png(labels, PALETTE)))
    assert img.mode == "P" and img.size == (9, 7)
    assert np.array_equal(np.asarray(img), labels)
    assert img.getpalette()[:9] == [c for rgb in PALETTE for c in rgb]


@pytest.mark.parametrize("shape", [(1, 1), (1, 37), (29, 1), (64, 97)])
def test_label_png_is_exact_for_any_shape_and_class_count(shape):
    """Up-filter differences wrap modulo 256 (class 149 above class 0): PIL must read back the
    exact indices, and check every chunk's CRC while doing so."""
    rng = np.random.default_rng(sum(shape))
    labels = rng.integers(0, 150, shape, dtype=np.uint8)
    labels[: shape[0] // 2] = np.repeat(labels[:1], shape[0] // 2, axis=0)  # repeated rows, as real maps have
    palette = [(i, 255 - i, (7 * i) % 256) for i in range(150)]
    img = Image.open(io.BytesIO(render.encode_label_png(labels, palette)))
    img.load()
    assert img.mode == "P" and np.array_equal(np.asarray(img), labels)
    assert img.getpalette()[: 3 * 150] == [c for rgb in palette for c in rgb]


def test_label_png_of_a_smooth_map_is_small():
    labels = np.zeros((1024, 2048), np.uint8)
    labels[300:700, 500:1500] = 3
    labels[800:, :] = 7
    assert len(render.encode_label_png(labels, PALETTE)) < 20_000  # 2 MB of pixels


def test_overlay_blends_image_and_palette():
    rgb = np.full((8, 8, 3), 200, np.uint8)
    labels = np.zeros((8, 8), np.uint8)
    labels[:, 4:] = 2
    out = np.asarray(Image.open(io.BytesIO(render.encode_overlay_jpeg(rgb, labels, PALETTE))))
    assert out.shape == (8, 8, 3)
    assert np.allclose(out[2, 1], [164, 164, 164], atol=8)  # (200 + 128) / 2
    assert np.allclose(out[2, 6], [100, 100, 228], atol=12)  # (200 + (0, 0, 255)) / 2


def test_rle_round_trip_and_histogram():
    labels = np.array([[0, 0, 1], [1, 1, 2]], np.uint8)
    rle = render.encode_rle(labels)
    assert rle["values"] == [0, 1, 2] and rle["counts"] == [2, 3, 1] and rle["size"] == [2, 3]
    assert np.array_equal(np.repeat(rle["values"], rle["counts"]).reshape(rle["size"]), labels)
    assert render.class_histogram(labels, 4).tolist() == [2, 3, 1, 0]
