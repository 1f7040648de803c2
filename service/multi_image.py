"""Several images in one /segment request: admitted one by one, segmented together, answered as JSON.

Each image reserves its own share of the memory budget and of the queue (``Runtime.reserve``), so a
request of 16 images costs what 16 requests would. All are reserved before any is decoded: a
refusal for lack of room (429 queue full, 503 memory busy) releases the others and refuses the
whole request, so a client retries it as a unit; a refusal of one image's own (corrupt, unsupported,
too large) becomes that image's error entry and the others are still answered. The images go
through the batcher concurrently, so they share GPU batches with each other and with other
requests. A JSON body cannot carry bytes, so the label maps (or overlays) of ``format=png / raw /
overlay`` are base64 fields of each image's entry.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from dataclasses import dataclass

from fastapi.responses import Response

from model.pipeline import render
from model.pipeline.errors import ImageError
from service.admission import Reservation
from service.errors import ServiceError, from_image_error
from service.runtime import Runtime, Segmentation
from service.schemas import (
    ImageFailure,
    ImageSegment,
    MultiFailure,
    MultiSegmentJSON,
    Timing,
    label_stats,
)

ROOM_STATUSES = (429, 503)  # refusals for lack of room right now: the whole request is retried


@dataclass(frozen=True)
class Upload:
    filename: str | None
    data: bytes


Held = Reservation | ServiceError  # an image's reservation, or why it was refused


def release(held: list) -> None:
    for item in held:
        if isinstance(item, Reservation):
            item.release()


def reserve_all(runtime: Runtime, uploads: list[Upload], fmt: str, rle: bool) -> list[Held]:
    """One reservation per image, in order, or that image's error. ``format=raw`` is reserved as
    ``png``: its base64 text and the JSON body holding it take about what PNG's buffers do (a
    one-image raw answer streams the label map itself and needs neither)."""
    output = "png" if fmt == "raw" else fmt
    held: list[Held] = []
    try:
        for upload in uploads:
            try:
                held.append(runtime.reserve(upload.data, output, rle))
            except ImageError as exc:
                held.append(from_image_error(exc))
            except ServiceError as exc:
                if exc.status in ROOM_STATUSES:
                    raise
                held.append(exc)
    except BaseException:
        release(held)
        raise
    return held


async def segment_all(runtime: Runtime, uploads: list[Upload], held: list[Held], keep_rgb: bool) -> list:
    """Each image's ``Segmentation`` or ``ServiceError``, in order; the images are submitted together
    so the batcher can put them in the same batches. An unexpected exception is raised (500, as for
    one image) once every image has finished, so no reservation is released under a running image."""

    async def one(upload: Upload, reservation: Held):
        if isinstance(reservation, ServiceError):
            return reservation
        try:
            return await runtime.segment(upload.data, reservation, keep_rgb)
        except ImageError as exc:
            return from_image_error(exc)
        except ServiceError as exc:
            return exc

    outcomes = await asyncio.gather(*(one(u, r) for u, r in zip(uploads, held)), return_exceptions=True)
    unexpected = next((o for o in outcomes if isinstance(o, BaseException) and not isinstance(o, ServiceError)), None)
    if unexpected is not None:
        raise unexpected
    return outcomes


def _entry(runtime: Runtime, index: int, upload: Upload, result: Segmentation, fmt: str, rle: bool, started: float) -> dict:
    """One answered image (runs in the codec pool: PNG/JPEG encoding and base64 take CPU time)."""
    cfg, out = runtime.config, result.outcome
    palette = cfg.dataset.palette
    payload = {}
    if fmt == "png":
        payload["png_base64"] = base64.b64encode(render.encode_label_png(result.labels, palette)).decode()
    elif fmt == "raw":
        payload["raw_base64"] = base64.b64encode(result.labels.tobytes()).decode()
    elif fmt == "overlay":
        payload["jpeg_base64"] = base64.b64encode(render.encode_overlay_jpeg(result.rgb, result.labels, palette)).decode()
    timing = Timing(queue_ms=out.queue_s * 1e3, inference_ms=out.inference_s * 1e3, total_ms=(time.perf_counter() - started) * 1e3)
    entry = ImageSegment(
        index=index, filename=upload.filename, timing=timing, batch_size=out.batch_size, **label_stats(cfg, result.labels, rle), **payload
    )
    return entry.model_dump(exclude_none=True)


def _failure(index: int, upload: Upload, exc: ServiceError) -> dict:
    failure = ImageFailure(index=index, filename=upload.filename, status=exc.status, error=exc.code, detail=exc.detail)
    return failure.model_dump(exclude_none=True)


def _json_bytes(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


async def answer(runtime: Runtime, uploads: list[Upload], outcomes: list, fmt: str, rle: bool, started: float) -> Response:
    """200 with every image's entry if any image was answered; if none was, the highest of their
    statuses with ``{"error": "all_images_failed", "detail", "results"}``."""

    async def entry(index: int, upload: Upload, outcome):
        if isinstance(outcome, ServiceError):
            return _failure(index, upload, outcome)
        return await runtime.encode(_entry, runtime, index, upload, outcome, fmt, rle, started)

    results = await asyncio.gather(*(entry(i, u, o) for i, (u, o) in enumerate(zip(uploads, outcomes))))
    failures = [o for o in outcomes if isinstance(o, ServiceError)]
    headers = {"X-Total-Ms": f"{(time.perf_counter() - started) * 1e3:.2f}"}
    if len(failures) < len(outcomes):
        body = MultiSegmentJSON(model=runtime.name, results=[]).model_dump() | {"results": results}
        return Response(await runtime.encode(_json_bytes, body), media_type="application/json", headers=headers)
    codes = ", ".join(f"#{r['index']} {r['error']}" for r in results)
    refused = MultiFailure(error="all_images_failed", detail=f"all {len(results)} images were refused: {codes}", results=results)
    for failure in failures:
        headers.update(failure.headers)  # e.g. Retry-After when they were refused while draining
    status = max(f.status for f in failures)
    return Response(_json_bytes(refused.model_dump(exclude_none=True)), status_code=status, media_type="application/json", headers=headers)
