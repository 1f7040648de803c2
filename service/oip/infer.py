"""A protocol request's N images through the runtime, the way /segment runs one.

Each image reserves its memory and queue share from its header (IMAGE) or its shape (PIXELS)
before anything is decoded; all N are reserved up front, so a request the queue or the budget
cannot take is refused (429 / 503 / 413) before any work starts, and its reservations are
returned. Then the N images go through the one dynamic batcher concurrently, so they share GPU
batches with each other and with other requests; the first failure cancels the rest.
"""

from __future__ import annotations

import asyncio

import numpy as np

from model.pipeline import render
from model.pipeline.errors import ImageError
from model.pipeline.restore import restore_labels
from service import tracing
from service.admission import Reservation, estimate
from service.errors import (
    BadRequest,
    ImageTooLarge,
    ServiceError,
    TooManyImages,
    from_image_error,
)
from service.oip.contract import (
    IMAGE,
    LABELS,
    LABELS_PNG,
    PIXELS,
    Images,
    Wanted,
    check_one_size,
    output_tensors,
)
from service.oip.wire import OutputTensor
from service.runtime import Runtime


def _indexed(exc: ImageError | ServiceError, images: Images, index: int) -> ServiceError:
    """The image's own fault, named by its place in the request (``IMAGE[1]: ...``)."""
    err = from_image_error(exc) if isinstance(exc, ImageError) else exc
    err.detail = f"{IMAGE if images.encoded is not None else PIXELS}[{index}]: {err.detail}"
    err.args = (err.detail,)
    return err


def _output_kind(wanted: list[Wanted]) -> str:
    """The /segment format whose answer costs what ours does: binary LABELS as ``raw``; a PNG, or
    LABELS as JSON text (four bytes a pixel), as ``png``."""
    return "raw" if all(w.name == LABELS and w.binary for w in wanted) else "png"


def _reserve_pixels(runtime: Runtime, pixels: np.ndarray, output: str) -> Reservation:
    height, width = pixels.shape[1:3]
    if not height or not width:
        raise BadRequest(f"PIXELS: a {width}x{height} image has no pixels")
    if height * width > runtime.settings.max_image_pixels:
        raise ImageTooLarge(f"{width}x{height} is over the {runtime.settings.max_image_pixels}-pixel limit")
    cost = estimate(runtime.policy, "RAW", (width, height), height * width * 3, output, False, False)
    try:
        return runtime.admission.reserve(cost)
    except ServiceError as exc:
        runtime.metrics.refuse(exc.code)
        raise


def reserve(runtime: Runtime, images: Images, wanted: list[Wanted]) -> list[Reservation]:
    """One reservation per image, all or none."""
    if len(images) > runtime.settings.queue_capacity:
        raise TooManyImages(f"{len(images)} images in one request; the queue holds at most {runtime.settings.queue_capacity}")
    output, taken = _output_kind(wanted), []
    try:
        for i in range(len(images)):
            if images.encoded is None:
                taken.append(_reserve_pixels(runtime, images.pixels, output))
                continue
            try:
                taken.append(runtime.reserve(images.encoded[i], output))
            except ImageError as exc:
                raise _indexed(exc, images, i) from None
    except BaseException:
        for reservation in taken:
            reservation.release()
        raise
    return taken


def _prepare(runtime: Runtime, rgb: np.ndarray):
    prepared = runtime.policy.prepare(rgb)
    return prepared, runtime.backend.stage(prepared.pixels)


async def _segment_pixels(runtime: Runtime, rgb: np.ndarray, reservation: Reservation) -> np.ndarray:
    """``Runtime.segment`` for pixels the client already decoded: resize/pad, batch, restore."""
    loop = asyncio.get_running_loop()
    with tracing.span("decode"):  # no decoding: the resize/pad
        prepared, staged = await loop.run_in_executor(runtime.pool, _prepare, runtime, rgb)
    outcome = await tracing.submit(runtime.batcher, prepared.bucket, (reservation, staged))
    runtime.metrics.queue_wait.observe(outcome.queue_s)
    with tracing.span("restore"):
        return await loop.run_in_executor(runtime.pool, restore_labels, outcome.value, prepared)


async def _one(runtime: Runtime, images: Images, index: int, reservation: Reservation) -> np.ndarray:
    try:
        if images.encoded is None:
            return await _segment_pixels(runtime, images.pixels[index], reservation)
        return (await runtime.segment(images.encoded[index], reservation)).labels
    except ImageError as exc:
        raise _indexed(exc, images, index) from None


async def _all(coroutines) -> list:
    """``gather`` that cancels the others at the first failure (queued ones leave the queue)."""
    tasks = [asyncio.ensure_future(c) for c in coroutines]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def segment(runtime: Runtime, images: Images, reservations: list[Reservation]) -> list[np.ndarray]:
    """The label maps of all images, each at its own size."""
    return await _all(_one(runtime, images, i, r) for i, r in enumerate(reservations))


async def encode_pngs(runtime: Runtime, wanted: list[Wanted], labels: list[np.ndarray]) -> list[bytes] | None:
    """Palette PNGs, in the codec pool, when LABELS_PNG is requested."""
    if not any(w.name == LABELS_PNG for w in wanted):
        return None
    palette = runtime.config.dataset.palette
    return await _all(runtime.encode(render.encode_label_png, lab, palette) for lab in labels)


async def outputs(runtime: Runtime, images: Images, wanted: list[Wanted], reservations: list[Reservation]) -> list[OutputTensor]:
    """The requested outputs of reserved images (segment, LABELS' one size, PNGs): what every
    transport does between parsing a request and framing its answer."""
    labels = await segment(runtime, images, reservations)
    check_one_size(wanted, labels)
    with tracing.span("encode"):
        pngs = await encode_pngs(runtime, wanted, labels)
        return await runtime.encode(output_tensors, wanted, labels, pngs)
