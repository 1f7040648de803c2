"""Property-based fuzz of the image decoder (issue 18): generated images, then mutated bytes.

    python -m bench.fuzz_decoder --examples 10000 [--seed 0] [--out bench/results/fuzz_decoder.json]

Cases come from `bench.fuzz_images.cases`. The property, checked by `check`:
`model.pipeline.decode.decode(data, MAX_PIXELS)` returns an HxWx3 uint8 array whose size is the
header's (width and height swapped where the EXIF orientation turns the image), or raises a
`model.pipeline.errors.ImageError` subclass; never another exception, never past DEADLINE_S (a
watchdog kills the process with a traceback after HANG_S, for a decode stuck in C), never more
than MEMORY_BOUND of peak RSS growth. Unmutated images must decode (lossless ones to their exact
pixels), GIF must be refused as unsupported, an honest header over the limit as too large. The
same holds for `decode_scaled` (what the service calls: JPEGs drafted down towards SCALED_FIT),
whose reported size must be the header's and whose pixels may be that size divided by at most 8.
tests/test_fuzz_decoder.py runs a derandomized slice of this on every CI run; this CLI runs the
nightly-style count, prints a table and writes the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import io
import json
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import PIL
from hypothesis import HealthCheck, Phase, given, seed as hypothesis_seed, settings
from PIL import Image

from bench.fuzz_images import MAX_PIXELS, ORIENTATION, TRANSPOSING, Case, case_bytes, cases, exact_pixels, transposed
from model.pipeline import errors
from model.pipeline.decode import SUPPORTED_FORMATS, decode, decode_scaled, probe

DEADLINE_S = 5.0  # one decode of at most MAX_PIXELS: thousands of times what it takes
HANG_S = 60.0  # a decode still running after this kills the process (faulthandler prints where)
MEMORY_BOUND = 64 * 2**20 + 32 * MAX_PIXELS  # peak RSS growth allowed for one decode
SCALED_FIT = (16, 12)  # the fit asked of decode_scaled: small, so most JPEGs are drafted
DCT_SCALES = 8  # libjpeg scales by 1/2, 1/4 or 1/8 at most


class PropertyViolation(AssertionError):
    """The decoder broke the property; the message says how."""


class PeakMemory:
    """Peak RSS growth over a block, from Linux's high-water mark (VmHWM), which writing 5 to
    /proc/self/clear_refs resets to the current RSS."""

    @staticmethod
    def _status_kib(field: str) -> int:
        return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))

    @classmethod
    def supported(cls) -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return cls._status_kib("VmHWM") > 0
        except (OSError, AttributeError):
            return False

    def __enter__(self):
        Path("/proc/self/clear_refs").write_text("5")
        self.before = self._status_kib("VmRSS")
        return self

    def __exit__(self, *exc):
        self.growth = (self._status_kib("VmHWM") - self.before) * 1024


@dataclasses.dataclass
class Result:
    outcome: str  # "decoded" or the ImageError subclass's name
    seconds: float
    memory_growth: int


def _orientation(data: bytes) -> int | None:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.getexif().get(ORIENTATION)
    except Exception:  # only asked of bytes that decoded; a failure here means no orientation
        return None


def _decoded_size(result) -> tuple[tuple[int, int], bool]:
    """``((height, width), pixels_are_that_size)`` of what a decoder returned: decode's array, or
    decode_scaled's ``(pixels, full upright (width, height))`` whose pixels may be drafted down."""
    rgb, size = result if isinstance(result, tuple) and len(result) == 2 else (result, None)
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise PropertyViolation(f"not an HxWx3 uint8 array: {type(rgb).__name__} {getattr(rgb, 'shape', '')}")
    if size is None:
        return rgb.shape[:2], True
    width, height = size
    if not all(-(-full // DCT_SCALES) <= got <= full for got, full in ((rgb.shape[1], width), (rgb.shape[0], height))):
        raise PropertyViolation(f"decode_scaled gave {rgb.shape[1]}x{rgb.shape[0]} pixels for a {width}x{height} image")
    return (height, width), rgb.shape[:2] == (height, width)


def _expect(case: Case, data: bytes, result) -> None:
    """The property, given what a decoder returned or raised (an ImageError)."""
    source, pristine = case.source, case.mutation.kind == "none"
    refused_format = source.fmt == "GIF"  # MPO is served by its first frame (issue 18)
    if pristine and refused_format and not isinstance(result, errors.UnsupportedImage):
        raise PropertyViolation(f"a {source.fmt} must be refused as UnsupportedImage, got {result!r:.200}")
    if isinstance(result, errors.ImageError):
        if pristine and not refused_format and source.width * source.height > MAX_PIXELS:
            if not isinstance(result, errors.ImageTooLarge):
                raise PropertyViolation(f"an honest {source.width}x{source.height} header must be ImageTooLarge, got {result!r}")
        elif pristine and not refused_format:
            raise PropertyViolation(f"an unmutated image was refused: {result!r}")
        return
    shape, full_pixels = _decoded_size(result)
    if pristine:
        size = (source.height, source.width)
        expected = size[::-1] if transposed(source) else size
        if shape != expected:
            raise PropertyViolation(f"decoded {shape}, the image is {expected} (height, width)")
        pixels = exact_pixels(source)
        rgb = result[0] if isinstance(result, tuple) else result
        if pixels is not None and full_pixels and not np.array_equal(rgb, pixels):
            raise PropertyViolation("a lossless image decoded to different pixels")
        return
    try:
        _, width, height = probe(data, MAX_PIXELS)
    except errors.ImageError as exc:
        raise PropertyViolation(f"decoded bytes whose header check refuses them: {exc!r}") from None
    allowed = {(height, width)} | ({(width, height)} if _orientation(data) in TRANSPOSING else set())
    if shape not in allowed:
        raise PropertyViolation(f"decoded {shape}, the header says {width}x{height} (height, width in {allowed})")


def check(case: Case, decoder=decode) -> Result:
    """Decode ``case``'s bytes with ``decoder`` and raise PropertyViolation if the property fails."""
    data = case_bytes(case)
    faulthandler.dump_traceback_later(HANG_S, exit=True)
    try:
        with PeakMemory() as memory:
            started = time.perf_counter()
            try:
                result = decoder(data, MAX_PIXELS)
            except errors.ImageError as exc:
                result = exc
            except Exception as exc:  # what the property forbids: anything else escaping
                raise PropertyViolation(f"{type(exc).__name__} escaped the decoder: {exc}") from exc
            seconds = time.perf_counter() - started
    finally:
        faulthandler.cancel_dump_traceback_later()
    if seconds > DEADLINE_S:
        raise PropertyViolation(f"decoding took {seconds:.1f} s (deadline {DEADLINE_S} s)")
    if memory.growth > MEMORY_BOUND:
        raise PropertyViolation(f"decoding grew the peak RSS by {memory.growth / 2**20:.0f} MiB (bound {MEMORY_BOUND / 2**20:.0f} MiB)")
    _expect(case, data, result)
    outcome = type(result).__name__ if isinstance(result, errors.ImageError) else "decoded"
    if isinstance(result, tuple) and not _decoded_size(result)[1]:
        outcome = "drafted"  # decode_scaled decoded it smaller, by DCT scaling
    return Result(outcome, seconds, memory.growth)


@dataclasses.dataclass
class Tally:
    """What a run saw: outcomes per source format and per mutation, the slowest decode, the
    largest memory growth, and (when collecting) the failures."""

    by_format: dict = dataclasses.field(default_factory=dict)  # decode's outcomes
    by_entry: dict = dataclasses.field(default_factory=dict)  # each decoder's outcomes
    by_mutation: dict = dataclasses.field(default_factory=dict)
    examples: int = 0
    slowest_s: float = 0.0
    max_memory_growth: int = 0
    failures: list = dataclasses.field(default_factory=list)

    def add(self, case: Case, entry: str, result: Result) -> None:
        self.by_entry.setdefault(entry, Counter())[result.outcome] += 1
        if entry == "decode":
            self.examples += 1
            self.by_format.setdefault(case.source.fmt, Counter())[result.outcome] += 1
            self.by_mutation.setdefault(case.mutation.kind, Counter())[result.outcome] += 1
        self.slowest_s = max(self.slowest_s, result.seconds)
        self.max_memory_growth = max(self.max_memory_growth, result.memory_growth)


def scaled(data: bytes, max_pixels: int):
    return decode_scaled(data, max_pixels, SCALED_FIT)


DECODERS = {"decode": decode, "decode_scaled": scaled}


def run(examples: int, *, derandomize: bool = False, seed: int | None = None, collect: bool = False, decoders=DECODERS) -> Tally:
    """Fuzz ``examples`` cases. ``collect``: record violations and go on (the nightly run);
    otherwise the first violation is shrunk by Hypothesis and raised (the CI slice)."""
    if not PeakMemory.supported():
        raise RuntimeError("the memory property needs Linux's /proc/self/clear_refs")
    tally = Tally()

    @settings(max_examples=examples, deadline=None, derandomize=derandomize, database=None, print_blob=True,
              phases=[Phase.generate] if collect else [Phase.generate, Phase.shrink],
              suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
    @given(cases)
    def fuzz(case: Case) -> None:
        for entry, decoder in decoders.items():
            try:
                tally.add(case, entry, check(case, decoder))
            except PropertyViolation as exc:
                if not collect:
                    raise PropertyViolation(f"{entry}: {exc}") from exc
                tally.failures.append({"decoder": entry, "case": repr(case), "violation": str(exc)})

    if seed is not None:
        fuzz = hypothesis_seed(seed)(fuzz)
    fuzz()
    return tally


def table(tally: Tally) -> str:
    outcomes = sorted({o for counts in tally.by_entry.values() for o in counts}, key=lambda o: (o not in ("decoded", "drafted"), o))
    lines = [f"| {'':<15} | {'examples':>8} | " + " | ".join(f"{o:>16}" for o in outcomes) + " |"]
    lines.append("|" + "---|" * (len(outcomes) + 2))
    for title, group in (("format", tally.by_format), ("mutation", tally.by_mutation), ("decoder", tally.by_entry)):
        for key in sorted(group):
            counts = group[key]
            cells = " | ".join(f"{counts.get(o, 0):>16}" for o in outcomes)
            lines.append(f"| {title[0]}:{key:<13} | {sum(counts.values()):>8} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis seed (the run is reproducible)")
    ap.add_argument("--out", type=Path, help="write the JSON here (bench/results/fuzz_decoder.json)")
    args = ap.parse_args(argv)
    started = time.perf_counter()
    tally = run(args.examples, seed=args.seed, collect=True)
    wall = time.perf_counter() - started
    print(table(tally))
    print(f"{tally.examples} examples in {wall:.0f} s; slowest decode {tally.slowest_s * 1e3:.1f} ms; "
          f"largest peak-RSS growth {tally.max_memory_growth / 2**20:.1f} MiB; {len(tally.failures)} property violations")  # fmt: skip
    for failure in tally.failures[:20]:
        print(f"VIOLATION {failure['decoder']}: {failure['violation']}\n    {failure['case']}")
    result = {
        "benchmark": "fuzz_decoder",
        "examples": tally.examples,
        "seed": args.seed,
        "max_pixels": MAX_PIXELS,
        "deadline_s": DEADLINE_S,
        "memory_bound_mib": MEMORY_BOUND / 2**20,
        "wall_s": round(wall, 1),
        "slowest_decode_ms": round(tally.slowest_s * 1e3, 2),
        "max_peak_rss_growth_mib": round(tally.max_memory_growth / 2**20, 2),
        "violations": len(tally.failures),
        "failures": tally.failures[:50],
        "by_format": {k: dict(v) for k, v in sorted(tally.by_format.items())},
        "by_mutation": {k: dict(v) for k, v in sorted(tally.by_mutation.items())},
        "by_decoder": {k: dict(v) for k, v in tally.by_entry.items()},
        "scaled_fit": list(SCALED_FIT),
        "supported_formats": list(SUPPORTED_FORMATS),
        "python": platform.python_version(),
        "pillow": PIL.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python -m bench.fuzz_decoder " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    if tally.failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
