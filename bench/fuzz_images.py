"""Images and byte mutations for the decoder fuzz (`bench.fuzz_decoder`), as Hypothesis strategies.

`cases` draws a `Case`: a `Source` (format, PIL mode, size, encoder options: progressive/CMYK/grey
JPEG, palette/16-bit/alpha/interlaced/animated PNG, lossy/lossless/animated WebP, BMP, compressed
and multi-page TIFF, GIF, MPO) and a `Mutation` of its bytes (truncation, bit flips, header bytes,
extreme integers, claimed sizes, garbage behind a valid signature, spliced bytes; PNG CRCs
optionally repaired so the mutation reaches past the checksum). Pixels come from a drawn seed, so
a case is small to print and rebuilds the same bytes anywhere.
"""

from __future__ import annotations

import dataclasses
import io
import re
import struct
import zlib

import cv2
import numpy as np
from hypothesis import strategies as st
from PIL import Image

MAX_PIXELS = 1 << 20  # the fuzz's pixel limit: small images decode, a header claiming more is refused
ORIENTATION = 0x0112
TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAGIC = {"JPEG": b"\xff\xd8\xff", "MPO": b"\xff\xd8\xff", "PNG": PNG_SIGNATURE, "BMP": b"BM", "TIFF": b"II*\x00",
         "GIF": b"GIF89a", "WEBP": b"RIFF\0\0\0\0WEBPVP8 "}  # fmt: skip
EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF)


@dataclasses.dataclass(frozen=True)
class Source:
    """An image to generate: ``options`` are the encoder's keywords plus our own (orientation,
    frames, interlace, bits16)."""

    fmt: str
    mode: str
    width: int
    height: int
    seed: int
    smooth: bool
    options: tuple = ()

    def option(self, name, default=None):
        return dict(self.options).get(name, default)


@dataclasses.dataclass(frozen=True)
class Mutation:
    kind: str  # one of MUTATIONS
    seed: int = 0
    fix_crc: bool = False


@dataclasses.dataclass(frozen=True)
class Case:
    source: Source
    mutation: Mutation


# ---------------------------------------------------------------- generating images


def _picture(mode: str, width: int, height: int, seed: int, smooth: bool) -> Image.Image:
    rng = np.random.default_rng(seed)
    if smooth:
        small = Image.frombytes("RGBA", (4, 4), rng.integers(0, 256, (4, 4, 4), np.uint8).tobytes())
        rgba = np.asarray(small.resize((width, height), Image.BILINEAR))
    else:
        rgba = rng.integers(0, 256, (height, width, 4), np.uint8)
    bands = {"RGB": 3, "RGBA": 4, "CMYK": 4, "L": 1, "LA": 2}
    if mode in bands:
        return Image.frombytes(mode, (width, height), np.ascontiguousarray(rgba[..., : bands[mode]]).tobytes())
    rgb = Image.frombytes("RGB", (width, height), np.ascontiguousarray(rgba[..., :3]).tobytes())
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=int(rng.integers(2, 257)))
    if mode == "1":
        return rgb.convert("L").convert("1")
    if mode == "I;16":
        return Image.frombytes("I;16", (width, height), rgba[..., :2].astype("<u2").tobytes())
    if mode == "F":
        return Image.frombytes("F", (width, height), (rgba[..., 0].astype("<f4") * 1.3 - 20).tobytes())
    raise ValueError(mode)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def interlaced_png(arr: np.ndarray) -> bytes:
    """An Adam7-interlaced 8-bit grey or RGB PNG (Pillow only writes non-interlaced ones)."""
    height, width = arr.shape[:2]
    raw = bytearray()
    for x0, y0, dx, dy in ADAM7:
        for row in arr[y0::dy, x0::dx] if width > x0 else ():
            raw += b"\0" + row.tobytes()
    header = struct.pack(">IIBBBBB", width, height, 8, 2 if arr.ndim == 3 else 0, 0, 0, 1)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(bytes(raw))) + _chunk(b"IEND", b"")


def first_frame(source: Source) -> Image.Image:
    return _picture(source.mode, source.width, source.height, source.seed, source.smooth)


def encode(source: Source) -> bytes:
    image = first_frame(source)
    keywords = {k: v for k, v in source.options if k not in ("orientation", "frames", "interlace", "bits16")}
    if source.option("interlace"):
        return interlaced_png(np.asarray(image))
    if source.option("bits16"):  # 16-bit RGB PNG, which only cv2 writes
        wide = np.asarray(image).astype(np.uint16) * 257 + np.uint16(source.seed % 251)
        return cv2.imencode(".png", wide[..., ::-1])[1].tobytes()
    if orientation := source.option("orientation"):
        if source.fmt == "TIFF":
            keywords["tiffinfo"] = {274: orientation}
        else:
            exif = Image.Exif()
            exif[ORIENTATION] = orientation
            keywords["exif"] = exif.tobytes()
    if (frames := source.option("frames", 1)) > 1:  # later frames differ in size where the format allows
        size = (source.width + 3, source.height + 1) if source.fmt in ("TIFF", "MPO") else (source.width, source.height)
        others = [_picture(source.mode, *size, source.seed + i, source.smooth) for i in range(1, frames)]
        keywords.update(save_all=True, append_images=others)
    buf = io.BytesIO()
    image.save(buf, format=source.fmt, **keywords)
    return buf.getvalue()


def transposed(source: Source) -> bool:
    return source.option("orientation") in TRANSPOSING


def exact_pixels(source: Source) -> np.ndarray | None:
    """The decoded pixels an unmutated lossless image must give, where that is simple to state."""
    lossless = source.fmt in ("PNG", "BMP") or (source.fmt == "TIFF" and source.option("compression") != "jpeg")
    lossless |= source.fmt == "WEBP" and source.option("lossless") and source.mode == "RGB"
    if not lossless or source.option("orientation") not in (None, 1) or source.option("bits16") or source.mode not in ("RGB", "RGBA", "L", "LA", "P", "1"):
        return None
    return np.asarray(first_frame(source).convert("RGB"))


# ---------------------------------------------------------------- strategies

SIZES = st.sampled_from(["small"] * 8 + ["strip", "over"]).flatmap(
    lambda kind: {
        "small": st.tuples(st.integers(1, 96), st.integers(1, 96)),
        "strip": st.tuples(st.integers(1, 3), st.integers(200, 1500)).flatmap(lambda s: st.sampled_from([s, s[::-1]])),
        "over": st.just((1100, 1000)),  # an honest header over MAX_PIXELS
    }[kind]
)
ORIENTATIONS = st.sampled_from([None] * 4 + list(range(1, 9)))


@st.composite
def sources(draw) -> Source:
    fmt = draw(st.sampled_from(["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"]))
    width, height = draw(SIZES)
    opts: dict = {}
    if fmt == "JPEG":
        mode = draw(st.sampled_from(["RGB", "L", "CMYK"]))
        opts.update(quality=draw(st.integers(1, 100)), progressive=draw(st.booleans()), optimize=draw(st.booleans()))
        if mode == "RGB":
            opts["subsampling"] = draw(st.sampled_from([0, 1, 2]))
    elif fmt == "PNG":
        mode = draw(st.sampled_from(["RGB", "RGBA", "L", "LA", "P", "P+alpha", "1", "I;16", "RGB16", "interlaced-RGB", "interlaced-L"]))
        if mode == "P+alpha":
            mode, opts["transparency"] = "P", draw(st.integers(0, 1))
        elif mode == "RGB16":
            mode, opts["bits16"] = "RGB", True
        elif mode.startswith("interlaced-"):
            mode, opts["interlace"] = mode.split("-")[1], True
        else:
            opts["frames"] = draw(st.sampled_from([1, 1, 2]))  # 2: APNG
    elif fmt == "WEBP":
        mode = draw(st.sampled_from(["RGB", "RGBA"]))
        opts.update(lossless=draw(st.booleans()), quality=draw(st.integers(0, 100)), frames=draw(st.sampled_from([1, 1, 2])))
    elif fmt == "BMP":
        mode = draw(st.sampled_from(["RGB", "L", "P", "1", "RGBA"]))
    elif fmt == "TIFF":
        mode = draw(st.sampled_from(["RGB", "RGBA", "L", "CMYK", "I;16", "F", "1"]))
        compressions = [None, "tiff_lzw", "tiff_adobe_deflate", "packbits"] + (["jpeg"] if mode in ("RGB", "L") else [])
        opts.update(compression=draw(st.sampled_from(compressions)), frames=draw(st.sampled_from([1, 1, 2])))
    elif fmt == "GIF":
        mode = draw(st.sampled_from(["P", "L", "RGB"]))
        opts["frames"] = draw(st.sampled_from([1, 2]))
    else:  # MPO: a multi-picture JPEG, as phones write
        mode, opts["frames"] = "RGB", 2
    if fmt in ("JPEG", "PNG", "WEBP", "TIFF") and not opts.get("interlace") and not opts.get("bits16"):
        opts["orientation"] = draw(ORIENTATIONS)
    options = tuple(sorted((k, v) for k, v in opts.items() if v is not None))
    return Source(fmt, mode, width, height, draw(st.integers(0, 2**16)), draw(st.booleans()), options)


MUTATIONS = ["none", "truncate", "flip", "header", "integer", "claim_size", "garbage", "splice"]
mutations = st.builds(Mutation, st.sampled_from(MUTATIONS), st.integers(0, 2**32 - 1), st.booleans())
cases = st.builds(Case, sources(), mutations)


# ---------------------------------------------------------------- mutating bytes


def fix_png_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, so a mutation reaches the parser behind the checksum."""
    out, pos = bytearray(data), len(PNG_SIGNATURE)
    while pos + 12 <= len(out):
        length = struct.unpack_from(">I", out, pos)[0]
        end = pos + 8 + length
        if end + 4 > len(out):
            break
        struct.pack_into(">I", out, end, zlib.crc32(out[pos + 4 : end]))
        pos = end + 4
    return bytes(out)


def _claim_size(fmt: str, data: bytearray, rng: np.random.Generator) -> None:
    """Write random (often extreme) dimensions where the format keeps them."""
    w, h = (int(rng.choice(EXTREMES)) if rng.random() < 0.5 else int(rng.integers(0, 5000)) for _ in range(2))
    if fmt == "PNG" and len(data) >= 24:
        struct.pack_into(">II", data, 16, w, h)
    elif fmt == "BMP" and len(data) >= 26:
        struct.pack_into("<II", data, 18, w, h)
    elif fmt == "GIF" and len(data) >= 10:
        struct.pack_into("<HH", data, 6, w & 0xFFFF, h & 0xFFFF)
    elif fmt in ("JPEG", "MPO") and (sof := re.search(rb"\xff[\xc0-\xc3]", bytes(data))) and sof.end() + 7 <= len(data):
        struct.pack_into(">HH", data, sof.end() + 3, h & 0xFFFF, w & 0xFFFF)
    elif fmt == "WEBP" and len(data) >= 30:
        struct.pack_into("<HH", data, 26, w & 0x3FFF, h & 0x3FFF)  # a VP8 frame's size (or VP8L/VP8X bytes)
    elif len(data) >= 8:  # TIFF: anywhere in the first IFD
        struct.pack_into("<I", data, int(rng.integers(0, min(len(data), 200) - 3)), w)


def mutate(data: bytes, fmt: str, mutation: Mutation) -> bytes:
    rng = np.random.default_rng(mutation.seed)
    out = bytearray(data)
    kind = mutation.kind
    if kind == "truncate":
        out = out[: int(rng.integers(0, len(out)))]
    elif kind == "flip":
        for pos in rng.integers(0, len(out), int(rng.integers(1, 9))):
            out[pos] ^= 1 << int(rng.integers(0, 8))
    elif kind == "header":
        for pos in rng.integers(0, min(len(out), 64), int(rng.integers(1, 9))):
            out[pos] = int(rng.integers(0, 256))
    elif kind == "integer" and len(out) >= 4:
        pos, size = int(rng.integers(0, min(len(out), 256) - 3)), int(rng.choice([2, 4]))
        value = int(rng.choice(EXTREMES)) & (0xFFFF if size == 2 else 0xFFFFFFFF)
        out[pos : pos + size] = value.to_bytes(size, str(rng.choice(["big", "little"])))
    elif kind == "claim_size":
        _claim_size(fmt, out, rng)
    elif kind == "garbage":
        out = bytearray(MAGIC[fmt] + rng.integers(0, 256, int(rng.integers(0, 4096)), np.uint8).tobytes())
    elif kind == "splice":
        start = int(rng.integers(0, len(out)))
        stop = min(len(out), start + int(rng.integers(0, 64)))
        out[start:stop] = rng.integers(0, 256, int(rng.integers(0, 64)), np.uint8).tobytes()
    if mutation.fix_crc and fmt == "PNG":
        out = bytearray(fix_png_crcs(bytes(out)))
    return bytes(out)


def case_bytes(case: Case) -> bytes:
    data = encode(case.source)
    return data if case.mutation.kind == "none" else mutate(data, case.source.fmt, case.mutation)
