"""HTTP only: request parsing, limits, status codes and response formats.

The image arrives as multipart field ``image`` or as a raw ``image/*`` body; the body is counted
while it streams in, so an oversized upload gets 413 without being buffered. Every failure is a
``service.errors`` exception rendered as ``{"error", "detail"}`` JSON by ``app``'s handlers. A client
that disconnects during its upload, or while its image is still queued, is dropped before inference
(logged as 499 in one access-log line, no traceback).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from model.pipeline import render
from service.errors import BadRequest, UnsupportedMediaType, UploadTooLarge
from service.admission import Reservation
from service.runtime import Runtime, Segmentation

router = APIRouter()

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client gone before its answer: not a server fault


class ErrorBody(BaseModel):
    error: str
    detail: str


class ClassStat(BaseModel):
    id: int
    name: str
    pixels: int
    fraction: float


class Timing(BaseModel):
    queue_ms: float
    inference_ms: float
    total_ms: float


class RLEMask(BaseModel):
    encoding: Literal["rle"]
    order: Literal["row-major"]
    size: list[int]
    values: list[int]
    counts: list[int]


class SegmentJSON(BaseModel):
    model: str
    width: int
    height: int
    classes: list[ClassStat]
    timing: Timing
    mask: RLEMask | None = None


_IMAGE_BODY = {
    "requestBody": {
        "required": True,
        "description": "JPEG, PNG, WebP, BMP or TIFF; animated images are served by their first frame",
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "properties": {"image": {"type": "string", "format": "binary"}}, "required": ["image"]}
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}

_SEGMENT_RESPONSES = {
    200: {
        "description": "format=png: palette PNG label map (pixel = class index) at the original size; "
        "format=raw: the same labels as height x width bytes, row-major (size in X-Height / X-Width); "
        "format=overlay: JPEG blend; format=json: class statistics",
        "content": {
            "image/png": {},
            "application/octet-stream": {},
            "image/jpeg": {},
            "application/json": {"schema": {"$ref": "#/components/schemas/SegmentJSON"}},
        },
        "model": SegmentJSON,
    },
    400: {"model": ErrorBody, "description": "empty body, corrupt or truncated image, bad multipart"},
    413: {"model": ErrorBody, "description": "upload over max_upload_bytes, image over max_image_pixels, or its estimated memory over the whole budget"},
    415: {"model": ErrorBody, "description": "not an image, unsupported format or content type"},
    422: {"model": ErrorBody, "description": "bad query parameter or impossible image dimensions"},
    429: {"model": ErrorBody, "description": "queue full (images or model input pixels); see Retry-After"},
    503: {"model": ErrorBody, "description": "loading or draining, or the memory budget is busy; see Retry-After"},
    504: {"model": ErrorBody, "description": "queued longer than request_timeout_s"},
}


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime


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


async def read_image(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = Request(request.scope, _limited(request.receive, limit))
    if content_type == "multipart/form-data":
        form = await body.form(max_files=1, max_fields=8)
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            raise BadRequest("multipart body has no file field named 'image'")
        return await upload.read()
    if content_type.startswith("image/"):
        return b"".join([chunk async for chunk in body.stream()])
    raise UnsupportedMediaType(
        f"content type {content_type or '(none)'!r}: send multipart/form-data with field 'image' or an image/* body"
    )


async def _until_disconnected(request: Request) -> None:
    """Returns when the client goes away (uvicorn answers receive() with http.disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _segment_unless_disconnected(
    request: Request, runtime: Runtime, data: bytes, reservation: Reservation, keep_rgb: bool
) -> Segmentation | None:
    work = asyncio.ensure_future(runtime.segment(data, reservation, keep_rgb))
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
    summary="Segment one image",
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
) -> Response:
    runtime = runtime_of(request)
    started = time.perf_counter()
    async with runtime.admit():  # 503 / 429 before the upload is read
        try:
            data = await read_image(request, runtime.settings.max_upload_bytes)
        except ClientDisconnect:  # gone mid-upload: the access log's one line, nothing computed
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        # 413 / 429 / 503 from the image header, before decoding; held until the body is sent
        reservation = runtime.reserve(data, format, mask == "rle")
        try:
            result = await _segment_unless_disconnected(request, runtime, data, reservation, format == "overlay")
            response = Response(status_code=CLIENT_CLOSED_REQUEST) if result is None else await _render(runtime, result, format, mask, started)
        except BaseException:
            reservation.release()
            raise
        return _ReleasedWhenSent(response, reservation)


class _ReleasedWhenSent(Response):
    """Sends ``response``, then releases the request's memory reservation: the encoded body (or
    the label map a raw response streams from) lives until it is sent, whether or not the client
    stays to receive it."""

    def __init__(self, response: Response, reservation: Reservation):
        self.response, self.reservation = response, reservation
        self.status_code, self.background = response.status_code, None

    async def __call__(self, scope, receive, send) -> None:
        try:
            await self.response(scope, receive, send)
        finally:
            self.reservation.release()


RAW_CHUNK_BYTES = 1 << 20


async def _label_bytes(labels) -> AsyncIterator[bytes]:
    """The label map's bytes a chunk at a time: no second full-size copy for ``format=raw``."""
    flat = memoryview(labels.reshape(-1))
    for start in range(0, len(flat), RAW_CHUNK_BYTES):
        yield bytes(flat[start : start + RAW_CHUNK_BYTES])


def _json_body(cfg, result: Segmentation, mask: str, started: float) -> dict:
    counts = render.class_histogram(result.labels, cfg.num_classes)
    total, out = int(result.labels.size), result.outcome
    return SegmentJSON(
        model=cfg.name,
        width=result.labels.shape[1],
        height=result.labels.shape[0],
        classes=[
            ClassStat(id=i, name=name, pixels=int(n), fraction=int(n) / total)
            for i, (name, n) in enumerate(zip(cfg.dataset.classes, counts))
            if n
        ],
        timing=Timing(queue_ms=out.queue_s * 1e3, inference_ms=out.inference_s * 1e3, total_ms=(time.perf_counter() - started) * 1e3),
        mask=render.encode_rle(result.labels) if mask == "rle" else None,
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
        response = JSONResponse(await runtime.encode(_json_body, cfg, result, mask, started))
    response.headers.update(
        {
            "X-Batch-Size": str(out.batch_size),
            "X-Queue-Ms": f"{out.queue_s * 1e3:.2f}",
            "X-Inference-Ms": f"{out.inference_s * 1e3:.2f}",
            "X-Total-Ms": f"{(time.perf_counter() - started) * 1e3:.2f}",
        }
    )
    return response


@router.get("/v1/models", summary="The served model, its input policy, backend, the precision it runs and batching settings")
async def models(request: Request) -> dict:
    return runtime_of(request).describe()


@router.get("/healthz", summary="Liveness: the process is serving HTTP")
async def healthz() -> dict:
    return {"status": "alive"}


@router.get("/readyz", summary="Readiness: model loaded and warmed up, not draining", responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> dict:
    runtime_of(request).require_ready()
    return {"status": "ready"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    return Response(runtime_of(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
