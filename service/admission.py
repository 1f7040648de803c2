"""Admission in bytes and work, decided from the image header before anything is decoded.

A 113 KB solid-colour PNG can claim 40 M pixels, so counting images does not bound memory. After
the upload is read, its header gives width x height (``model.pipeline.decode.probe``); from that
``estimate`` bounds the request's peak memory (upload, decode, labels, the response's encoding
buffers, which depend on the format) and its model work (the pixels of the bucket it will run in).
The request then reserves both for its lifetime: over the memory budget -> 503 + Retry-After,
over the queue's work or image count -> 429, a single image over the whole budget -> 413. The
coefficients are the pipeline's measured peaks per pixel (tests/test_memory.py checks the real
peak stays under the estimate).

The default budget is a fraction of the container's memory limit (cgroup v2 or v1, else the
machine's RAM) minus what the process holds after warm-up.
"""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from model.pipeline.buckets import InputPolicy
from model.pipeline.decode import jpeg_draft_scale
from model.pipeline.resize import rescale_size
from service.errors import ImageTooLarge, MemoryBusy, QueueFull

_CGROUP_V2 = Path("/sys/fs/cgroup/memory.max")
_CGROUP_V1 = Path("/sys/fs/cgroup/memory/memory.limit_in_bytes")
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a huge page-rounded number

# Peak bytes per original pixel, measured on a 6320x6320 image (tests/test_memory.py):
DECODE_PIL = 10  # PIL's 4-byte RGBX image + its tobytes() + the writable numpy copy
DECODE_CV2 = 6  # complete RGB/grey JPEGs: cv2's BGR image + the RGB conversion
RGB = 3  # the decoded image, kept until the response is encoded when it is an overlay
LABELS = 1  # the label map at the original size
ENCODE = {  # the response's encoding buffers beyond the label map (and the image, for overlays)
    "png": 3,  # filtered rows + deflate output (at worst the input) + the assembled file
    "raw": 0,  # streamed from the label map itself
    "json": 0,  # counted a band at a time; the RLE's cost is per run, below
    "overlay": 8,  # blended image + PIL's 4-byte copy + the JPEG and its copy
}
RLE_PIXEL = 2  # the run-boundary masks
RLE_RUN = 160  # per run: numpy indices, two Python lists, pydantic's copies, the JSON text
BUCKET = 20  # per model input pixel: padded RGB, staged float copy, bucket labels
FIXED = 1 << 20  # Python objects, headers, small buffers


def container_memory_limit() -> int:
    """The memory this process may use: the cgroup v2 or v1 limit, else the machine's RAM."""
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in (_CGROUP_V2, _CGROUP_V1):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < _UNLIMITED:
            return min(int(text), physical)
    return physical


def resident_bytes() -> int:
    """This process's resident set size (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def default_budget(fraction: float) -> int:
    """``fraction`` of the container's limit minus what the process holds now (call after warm-up)."""
    return max(0, int(container_memory_limit() * fraction) - resident_bytes())


@dataclass(frozen=True)
class Estimate:
    """What one request will cost, known from its header."""

    peak_bytes: int
    work: int  # model input pixels: the bucket's area
    decode_fit: tuple[int, int] | None  # decode a JPEG straight to about this size (upright)


def estimate(
    policy: InputPolicy, fmt: str, size: tuple[int, int], upload_bytes: int, output: str, rle: bool, draft: bool
) -> Estimate:
    """Peak bytes and work of one request for an image of ``size`` (width, height) answered as
    ``output`` (png, raw, json, overlay). ``draft``: JPEGs may be decoded at a reduced size when
    the full-size image is not needed (not for overlays). EXIF orientation may swap the sides;
    the bounds are symmetric enough in practice, and the bucket is taken as the larger one."""
    width, height = size
    pixels = width * height
    resized = rescale_size(size, policy.test_scale)
    bucket = max(policy.bucket_for(resized), policy.bucket_for(resized[::-1]), key=lambda b: b[0] * b[1])
    work = bucket[0] * bucket[1]
    fit = resized if draft and fmt == "JPEG" and output != "overlay" else None
    decoded = pixels
    if fit is not None:
        scale = min(jpeg_draft_scale(size, fit), jpeg_draft_scale(size, fit[::-1]))
        if scale == 1:
            fit = None
        decoded = math.ceil(width / scale) * math.ceil(height / scale)
    decoding = (DECODE_CV2 if fmt == "JPEG" and fit is None else DECODE_PIL) * decoded
    answering = (RGB * pixels if output == "overlay" else 0) + LABELS * pixels + ENCODE[output] * pixels
    if output == "json" and rle:
        runs = min(pixels, max(width, height) * max(resized))  # nearest upscaling: <= resized-width runs a row
        answering += RLE_PIXEL * pixels + RLE_RUN * runs
    peak = upload_bytes + max(decoding, answering) + BUCKET * work + FIXED
    return Estimate(peak, work, fit)


@dataclass(eq=False)
class Reservation:
    """One request's share of the budget and of the queue; release is idempotent, so the
    request's ``finally`` and the batch that starts it can both call their part."""

    admission: Admission
    estimate: Estimate
    queued: bool = field(default=True)  # still counted in the queue (decoding or waiting)
    held: bool = field(default=True)  # still holding its bytes

    def leave_queue(self) -> None:
        """Its batch started: no longer queued work (called from an inference thread)."""
        self.admission._leave_queue(self)

    def release(self) -> None:
        self.admission._release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


class MemoryBudget:
    """The bytes every model's requests in flight share (one process, one memory limit); its
    size is set once the start-up models are warmed up (``default_budget``)."""

    def __init__(self, budget_bytes: int = 0):
        self.budget_bytes = budget_bytes
        self.reserved_bytes = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> None:
        """Reserve ``n`` bytes, or 503 + Retry-After while the budget is busy."""
        mb = 1 << 20
        with self._lock:
            if self.reserved_bytes + n > self.budget_bytes:
                raise MemoryBusy(
                    f"memory budget busy: {self.reserved_bytes // mb} of {self.budget_bytes // mb} MB reserved, "
                    f"this image needs {n // mb} MB; retry later"
                )
            self.reserved_bytes += n

    def give(self, n: int) -> None:
        with self._lock:
            self.reserved_bytes -= n


class Admission:
    """One model's queue books over the shared memory budget: thread-safe (batches start on
    inference threads)."""

    def __init__(self, memory: MemoryBudget, capacity_images: int, capacity_work: int):
        self.memory = memory
        self.capacity_images = capacity_images
        self.capacity_work = capacity_work
        self.queued_images = 0
        self.queued_work = 0
        self._lock = threading.Lock()

    def check_room(self) -> None:
        """Before the body is read: 429 if the queue already holds ``capacity_images``."""
        if self.queued_images >= self.capacity_images:
            raise QueueFull(f"queue is full ({self.capacity_images} images); retry later")

    def reserve(self, cost: Estimate) -> Reservation:
        """Take ``cost`` from the budget and the queue, or refuse: 413 if it could never fit,
        429 if the queue is full, 503 + Retry-After if the budget is busy right now."""
        mb = 1 << 20
        if cost.peak_bytes > self.memory.budget_bytes:
            raise ImageTooLarge(
                f"this image needs about {cost.peak_bytes // mb} MB to serve in this format; "
                f"the memory budget is {self.memory.budget_bytes // mb} MB (send a smaller image, or format=raw/json)"
            )
        with self._lock:
            self.check_room()
            if self.queued_work + cost.work > self.capacity_work and self.queued_images:
                raise QueueFull(f"queued work is at its bound ({self.capacity_work} model input pixels); retry later")
            self.memory.take(cost.peak_bytes)
            self.queued_images += 1
            self.queued_work += cost.work
        return Reservation(self, cost)

    def _leave_queue(self, r: Reservation) -> None:
        with self._lock:
            if r.queued:
                r.queued = False
                self.queued_images -= 1
                self.queued_work -= r.estimate.work

    def _release(self, r: Reservation) -> None:
        self._leave_queue(r)
        with self._lock:
            if not r.held:
                return
            r.held = False
        self.memory.give(r.estimate.peak_bytes)
