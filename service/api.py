"""HTTP only: request parsing, limits, status codes and response formats.

The image arrives as multipart field ``image`` or as a raw ``image/*`` body (several images as
repeated ``image`` fields, answered by ``service.multi_image``); the body is counted
while it streams in, so an oversized upload gets 413 without being buffered. Every failure is a
``service.errors`` exception rendered as ``{"error", "detail"}`` JSON by ``app``'s handlers. A client
that disconnects during its upload, or while its image is still queued, is dropped before inference
(logged as 499 in one access-log line, no traceback).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from model.pipeline import render
from service import multi_image, tracing
from service.admission import Reservation
from service.errors import (
    BadRequest,
    NotReady,
    TooManyImages,
    UnsupportedMediaType,
    UploadTooLarge,
)
from service.multi_image import Upload
from service.repository.registry import Repository
from service.runtime import Runtime, Segmentation
from service.schemas import (
    ErrorBody,
    MultiSegmentJSON,
    SegmentJSON,
    Timing,
    label_stats,
)

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client gone before its answer: not a server fault


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "JPEG, PNG, WebP, BMP or TIFF; animated images are served by their first frame",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "description": "one image, or several as repeated fields (up to max_images_per_request): "
                            "then the answer is JSON with one entry per image",
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "minItems": 1,
                        }
                    },
                    "required": ["image"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_SEGMENT_RESPONSES = {
    200: {
        "description": "format=png: palette PNG label map (pixel = class index) at the original size; "
        "format=raw: the same labels as height x width bytes, row-major (size in X-Height / X-Width); "
        "format=overlay: JPEG blend; format=json: class statistics. Several images: always JSON "
        "(MultiSegmentJSON), one entry per image in order: its statistics plus png_base64 / raw_base64 / "
        "jpeg_base64 for format=png / raw / overlay, or its own error and status when that image was refused",
        "content": {
            "image/png": {},
            "application/octet-stream": {},
            "image/jpeg": {},
            "application/json": {},  # its schema: from "model"
        },
        "model": SegmentJSON | MultiSegmentJSON,
    },
    400: {
        "model": ErrorBody,
        "description": "empty body, corrupt or truncated image, bad multipart. Several images that were all refused: "
        "all_images_failed with each image's error in results, under the highest of their statuses",
    },
    413: {
        "model": ErrorBody,
        "description": "upload over max_upload_bytes, image over max_image_pixels, or its estimated memory over the whole "
        "budget; more images than max_images_per_request or queue_capacity (too_many_images)",
    },
    404: {"model": ErrorBody, "description": "model= or version= names no served model or version"},
    415: {"model": ErrorBody, "description": "not an image, unsupported format or content type"},
    422: {"model": ErrorBody, "description": "bad query parameter or impossible image dimensions"},
    429: {"model": ErrorBody, "description": "queue full (images or model input pixels); see Retry-After"},
    503: {"model": ErrorBody, "description": "loading or draining, or the memory budget is busy; see Retry-After"},
    504: {"model": ErrorBody, "description": "queued longer than request_timeout_s"},
}


def repository_of(request: Request) -> Repository:
    return request.app.state.repository


def runtime_of(request: Request) -> Runtime:
    """The model the request names with ``?model=`` (at ``&version=``), else the default one."""
    params = request.query_params
    return repository_of(request).get(params.get("model") or None, params.get("version") or None)


def _limited(receive, limit: int):
    """Wrap an ASGI ``receive`` so the body raises ``UploadTooLarge`` once it passes ``limit``."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise UploadTooLarge(f"request body is over the {limit}-byte limit")
        return message

    return wrapped


async def _read_form(body: Request, max_images: int) -> list[Upload]:
    """Every ``image`` file of a multipart body (Starlette's parser, called directly so that too
    many files is told apart from malformed multipart)."""
    try:
        async with contextlib.aclosing(body.stream()) as stream:
            form = await MultiPartParser(body.headers, stream, max_files=max_images, max_fields=8).parse()
    except MultiPartException as exc:
        if exc.message.startswith("Too many files"):
            raise TooManyImages(f"more than {max_images} files in one request (max_images_per_request)") from None
        raise BadRequest(exc.message) from None
    try:
        files = form.getlist("image")
        if not files or not all(isinstance(f, UploadFile) for f in files):
            raise BadRequest("multipart body has no file field named 'image'")
        return [Upload(f.filename, await f.read()) for f in files]
    finally:
        await form.close()


async def read_images(request: Request, limit: int, max_images: int) -> list[Upload]:
    """The uploaded images (one for an ``image/*`` body), counted against ``limit`` bytes in all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = Request(request.scope, _limited(request.receive, limit))
    if content_type == "multipart/form-data":
        return await _read_form(body, max_images)
    if content_type.startswith("image/"):
        return [Upload(None, b"".join([chunk async for chunk in body.stream()]))]
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r}: send multipart/form-data with field 'image' or an image/* body"
    )


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (uvicorn answers receive() with http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(request: Request, coroutine):
    """``coroutine``'s result, or None if the client went away first (the work is cancelled)."""
    work = asyncio.ensure_future(coroutine)
    gone = asyncio.ensure_future(_until_disconnected(request))
    await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    if work.done():
        gone.cancel()
        return work.result()
    work.cancel()  # still queued -> removed from the queue, never computed
    await asyncio.gather(work, return_exceptions=True)
    return None


@router.post(
    "/segment",
    summary="Segment one image, or several in one multipart request",
    response_class=Response,
    responses=_SEGMENT_RESPONSES,
    openapi_extra=_IMAGE_BODY,
)
async def segment(
    request: Request,
    format: Literal["png", "raw", "json", "overlay"] = Query(
        "png", description="png label map, raw label bytes (no encoding cost), json statistics, or overlay JPEG"
    ),
    mask: Literal["none", "rle"] = Query("none", description="format=json only: include the label map run-length encoded"),
    model: str | None = Query(None, description="the served model to use (GET /v1/models lists them); default: the first"),
    version: str | None = Query(None, description="that model's version; default: its highest served"),
) -> Response:
    runtime = runtime_of(request)
    started = time.perf_counter()
    settings = runtime.settings
    async with runtime.admit():  # 503 / 429 before the upload is read
        try:
            uploads = await read_images(request, settings.max_upload_bytes, settings.max_images_per_request)
        except ClientDisconnect:  # gone mid-upload: the access log's one line, nothing computed
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        if len(uploads) > 1:
            return await _segment_several(request, runtime, uploads, format, mask, started)
        data = uploads[0].data
        # 413 / 429 / 503 from the image header, before decoding; held until the body is sent
        reservation = runtime.reserve(data, format, mask == "rle")
        try:
            result = await _unless_disconnected(request, runtime.segment(data, reservation, format == "overlay"))
            if result is None:
                response = Response(status_code=CLIENT_CLOSED_REQUEST)
            else:
                with tracing.span("encode", {"deeplab.format": format}):
                    response = await _render(runtime, result, format, mask, started)
        except BaseException:
            reservation.release()
            raise
        return ReleasedWhenSent(response, [reservation])


async def _segment_several(request: Request, runtime: Runtime, uploads: list[Upload], fmt: str, mask: str, started: float) -> Response:
    """Several images: each reserved as a request of its own, segmented together, answered as JSON."""
    capacity = runtime.settings.queue_capacity
    if len(uploads) > capacity:  # could never be admitted at once: 429 forever would mislead
        raise TooManyImages(f"{len(uploads)} images in one request; the queue holds at most {capacity} (queue_capacity)")
    held = multi_image.reserve_all(runtime, uploads, fmt, mask == "rle")
    reservations = [r for r in held if isinstance(r, Reservation)]
    try:
        outcomes = await _unless_disconnected(request, multi_image.segment_all(runtime, uploads, held, fmt == "overlay"))
        if outcomes is None:
            response = Response(status_code=CLIENT_CLOSED_REQUEST)
        else:
            with tracing.span("encode", {"deeplab.format": fmt}):
                response = await multi_image.answer(runtime, uploads, outcomes, fmt, mask == "rle", started)
    except BaseException:
        multi_image.release(reservations)
        raise
    return ReleasedWhenSent(response, reservations)


class ReleasedWhenSent(Response):
    """Sends ``response``, then releases the request's memory reservations (one per image): the
    encoded body (or the label map a raw response streams from) lives until it is sent, whether or
    not the client stays to receive it."""

    def __init__(self, response: Response, reservations: list[Reservation]):
        self.response, self.reservations = response, reservations
        self.status_code, self.background = response.status_code, None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            multi_image.release(self.reservations)


RAW_CHUNK_BYTES = 1 << 20


async def _label_bytes(labels) -> AsyncIterator[bytes]:
    """The label map's bytes a chunk at a time: no second full-size copy for ``format=raw``."""
    flat = memoryview(labels.reshape(-1))
    for start in range(0, len(flat), RAW_CHUNK_BYTES):
        yield bytes(flat[start : start + RAW_CHUNK_BYTES])


def _json_body(name: str, cfg, result: Segmentation, mask: str, started: float) -> dict:
    out = result.outcome
    return SegmentJSON(
        model=name,
        timing=Timing(queue_ms=out.queue_s * 1e3, inference_ms=out.inference_s * 1e3, total_ms=(time.perf_counter() - started) * 1e3),
        **label_stats(cfg, result.labels, mask == "rle"),
    ).model_dump(exclude_none=True)


async def _render(runtime: Runtime, result: Segmentation, fmt: str, mask: str, started: float) -> Response:
    """Encode in the codec pool: a PNG, JPEG or RLE of a large image takes too long for the loop."""
    cfg, out = runtime.config, result.outcome
    palette = cfg.dataset.palette
    if fmt == "png":
        response = Response(await runtime.encode(render.encode_label_png, result.labels, palette), media_type="image/png")
    elif fmt == "raw":
        labels = result.labels
        response = StreamingResponse(_label_bytes(labels), media_type="application/octet-stream")
        response.headers.update({"Content-Length": str(labels.nbytes), "X-Height": str(labels.shape[0]), "X-Width": str(labels.shape[1])})
    elif fmt == "overlay":
        response = Response(await runtime.encode(render.encode_overlay_jpeg, result.rgb, result.labels, palette), media_type="image/jpeg")
    else:
        response = JSONResponse(await runtime.encode(_json_body, runtime.name, cfg, result, mask, started))
    response.headers.update(
        {
            "X-Model": runtime.name,
            "X-Batch-Size": str(out.batch_size),
            "X-Queue-Ms": f"{out.queue_s * 1e3:.2f}",
            "X-Inference-Ms": f"{out.inference_s * 1e3:.2f}",
            "X-Total-Ms": f"{(time.perf_counter() - started) * 1e3:.2f}",
        }
    )
    return response


@router.get("/v1/models", summary="Every served model (the first is the default): input policy, backend, precision, batching")
async def models(request: Request) -> dict:
    repository = repository_of(request)
    described = [r.describe() for r in repository.runtimes() if r.state == "ready"]
    return {"default": described[0]["name"] if described else None, "models": described}


@router.get("/v1/models/{name}", summary="One served model (its highest version, or ?version=)", responses={404: {"model": ErrorBody}})
async def model(request: Request, name: str, version: str | None = None) -> dict:
    return repository_of(request).get(name, version).describe()


@router.get("/healthz", summary="Liveness: the process is serving HTTP")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up, not draining", responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> dict:
    repository = repository_of(request)
    if not repository.ready:
        raise NotReady("service is draining" if repository.draining else "service is loading")
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    repository = repository_of(request)
    text = repository.metrics.render()
    if repository.peers is not None:  # one of several worker processes: every worker's series
        text = repository.peers.merged(text)
    return Response(text, media_type=CONTENT_TYPE_LATEST)
