"""A small typed Python client for the service, sync and async, on httpx.

    from service.client import SegmentationClient
    with SegmentationClient("http://localhost:8000", api_key="...") as client:
        labels = client.segment("photo.jpg").labels  # H x W uint8 class ids
        results = client.segment_many(["a.jpg", "b.jpg"])  # one request per 16 images

Images may be a path, encoded bytes, an H x W x 3 uint8 RGB array or a PIL image (arrays and PIL
images are sent as PNG). Refusals of the whole request are raised as ``SegmentationError`` built
from the service's ``{"error", "detail"}`` body; 429 and 503 are retried up to ``max_retries``
times, waiting what ``Retry-After`` asks (capped at ``max_retry_wait_s``), because the service
sheds load with exactly those two. Needs only httpx, numpy and Pillow (no server packages).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import io
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

import httpx
import numpy as np
from PIL import Image

Format = Literal["png", "raw", "json", "overlay"]
ImageInput = Union[str, Path, bytes, bytearray, np.ndarray, Image.Image]
RETRIED_STATUSES = (429, 503)
DEFAULT_IMAGES_PER_REQUEST = 16  # the service's default max_images_per_request


class SegmentationError(Exception):
    """A refusal by the service: HTTP ``status``, its stable ``code`` (e.g. ``queue_full``) and ``detail``."""

    def __init__(self, status: int, code: str, detail: str, retry_after_s: float | None = None):
        super().__init__(f"{status} {code}: {detail}")
        self.status, self.code, self.detail, self.retry_after_s = status, code, detail, retry_after_s

    @classmethod
    def from_response(cls, response: httpx.Response) -> SegmentationError:
        try:
            body = response.json()
            code, detail = str(body["error"]), str(body["detail"])
        except (ValueError, KeyError, TypeError):  # not the service's body (a proxy's page, say)
            code, detail = f"http_{response.status_code}", response.text[:200]
        return cls(response.status_code, code, detail, retry_after(response))


@dataclass(frozen=True)
class SegmentResult:
    """One image's answer; which fields are set depends on the format asked for."""

    format: str
    labels: np.ndarray | None = None  # png / raw: H x W uint8 class indices at the original size
    json: dict | None = None  # json: the statistics (for several images, also with png/raw/overlay)
    overlay: bytes | None = None  # overlay: the JPEG
    filename: str | None = None


def retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date), None if absent or unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def encode_image(image: ImageInput, name: str = "image") -> tuple[str, bytes]:
    """``(filename, encoded bytes)`` for any accepted image input."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        return path.name, path.read_bytes()
    if isinstance(image, (bytes, bytearray)):
        return name, bytes(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an H x W x 3 uint8 RGB array, got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        (image if image.mode in ("RGB", "RGBA", "L", "P") else image.convert("RGB")).save(buf, format="PNG")
        return f"{name}.png", buf.getvalue()
    raise TypeError(f"unsupported image input: {type(image).__name__}")


def _files(images: Sequence[ImageInput]) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image", (*encode_image(img, f"image{i}"), "application/octet-stream")) for i, img in enumerate(images)]


def _parse_one(response: httpx.Response, fmt: str, filename: str | None) -> SegmentResult:
    if fmt == "png":
        labels = np.asarray(Image.open(io.BytesIO(response.content)))
        return SegmentResult(fmt, labels=labels, filename=filename)
    if fmt == "raw":
        shape = int(response.headers["x-height"]), int(response.headers["x-width"])
        return SegmentResult(fmt, labels=np.frombuffer(response.content, np.uint8).reshape(shape), filename=filename)
    if fmt == "overlay":
        return SegmentResult(fmt, overlay=response.content, filename=filename)
    return SegmentResult(fmt, json=response.json(), filename=filename)


def _parse_entry(entry: dict, fmt: str) -> SegmentResult | SegmentationError:
    """One entry of a several-images answer (``service.schemas.ImageSegment`` or ``ImageFailure``)."""
    if "error" in entry:
        return SegmentationError(entry["status"], entry["error"], entry["detail"])
    filename, labels, overlay = entry.get("filename"), None, None
    if fmt == "png":
        labels = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["png_base64"]))))
    elif fmt == "raw":
        labels = np.frombuffer(base64.b64decode(entry["raw_base64"]), np.uint8).reshape(entry["height"], entry["width"])
    elif fmt == "overlay":
        overlay = base64.b64decode(entry["jpeg_base64"])
    stats = {k: v for k, v in entry.items() if not k.endswith("_base64")}
    return SegmentResult(fmt, labels=labels, json=stats, overlay=overlay, filename=filename)


def _parse_many(response: httpx.Response, fmt: str) -> list[SegmentResult | SegmentationError]:
    body = response.json()
    entries = body["results"] if response.status_code == 200 or "results" in body else None
    if entries is None:
        raise SegmentationError.from_response(response)
    return [_parse_entry(entry, fmt) for entry in entries]


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Common:
    """Settings and request building shared by the sync and async clients."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        max_retry_wait_s: float = 10.0,
        images_per_request: int = DEFAULT_IMAGES_PER_REQUEST,
    ):
        if max_retries < 0 or images_per_request < 1:
            raise ValueError("max_retries must be >= 0 and images_per_request >= 1")
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = httpx.Timeout(timeout_s)
        self.max_retries, self.max_retry_wait_s = max_retries, max_retry_wait_s
        self.images_per_request = images_per_request

    def _delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying ``response``, or None if it is final."""
        if response.status_code not in RETRIED_STATUSES or attempt >= self.max_retries:
            return None
        asked = retry_after(response)
        return min(self.max_retry_wait_s, asked if asked is not None else 0.25 * 2**attempt)

    @staticmethod
    def _params(fmt: str, model: str | None, mask: str | None) -> dict:
        params = {"format": fmt}
        if model is not None:
            params["model"] = model
        if mask is not None:
            params["mask"] = mask
        return params

    @staticmethod
    def _checked(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            raise SegmentationError.from_response(response)
        return response


class SegmentationClient(_Common):
    """Blocking client; use as a context manager (or call ``close``) to release its connections."""

    def __init__(self, base_url: str, **options):
        super().__init__(base_url, **options)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = self.http.request(method, path, **kwargs)
            delay = self._delay(response, attempt)
            if delay is None:
                return response
            time.sleep(delay)
        return response

    def segment(self, image: ImageInput, model: str | None = None, format: Format = "png", mask: str | None = None) -> SegmentResult:
        """One image; raises ``SegmentationError`` when it is refused."""
        files = _files([image])
        response = self._checked(self._send("POST", "/segment", params=self._params(format, model, mask), files=files))
        return _parse_one(response, format, files[0][1][0])

    def segment_many(
        self, images: Iterable[ImageInput], model: str | None = None, format: Format = "png", mask: str | None = None
    ) -> list[SegmentResult | SegmentationError]:
        """Several images, ``images_per_request`` to a request (they share the server's batches); an
        image the service refused is a ``SegmentationError`` in its place, not raised."""
        results: list[SegmentResult | SegmentationError] = []
        for chunk in _chunks(list(images), self.images_per_request):
            if len(chunk) == 1:
                results.append(self._single(chunk[0], model, format, mask))
                continue
            response = self._send("POST", "/segment", params=self._params(format, model, mask), files=_files(chunk))
            results += _parse_many(response, format)
        return results

    def _single(self, image, model, format, mask) -> SegmentResult | SegmentationError:
        try:
            return self.segment(image, model, format, mask)
        except SegmentationError as exc:
            if exc.status in RETRIED_STATUSES:
                raise
            return exc

    def models(self) -> dict:
        """What ``GET /v1/models`` publishes: ``default`` (the model used without ``model=``) and
        ``models``, each with its name, version, config, classes, palette, input policy, backend, batching."""
        return self._checked(self._send("GET", "/v1/models")).json()

    def health(self) -> bool:
        """The process answers HTTP (``/healthz``); False when it cannot be reached."""
        try:
            return self.http.get("/healthz").status_code == 200
        except httpx.TransportError:
            return False

    def ready(self) -> bool:
        """Loaded, warmed up and not draining (``/readyz``); False when it cannot be reached."""
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> SegmentationClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AsyncSegmentationClient(_Common):
    """The same API for asyncio; ``segment_many`` sends its requests concurrently."""

    def __init__(self, base_url: str, **options):
        super().__init__(base_url, **options)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    async def _send(self, method: str, path: str, **kwargs) -> httpx.Response:
        for attempt in range(self.max_retries + 1):
            response = await self.http.request(method, path, **kwargs)
            delay = self._delay(response, attempt)
            if delay is None:
                return response
            await asyncio.sleep(delay)
        return response

    async def segment(self, image: ImageInput, model: str | None = None, format: Format = "png", mask: str | None = None) -> SegmentResult:
        files = _files([image])
        response = self._checked(await self._send("POST", "/segment", params=self._params(format, model, mask), files=files))
        return _parse_one(response, format, files[0][1][0])

    async def segment_many(
        self, images: Iterable[ImageInput], model: str | None = None, format: Format = "png", mask: str | None = None
    ) -> list[SegmentResult | SegmentationError]:
        async def chunk_results(chunk: list) -> list:
            if len(chunk) == 1:
                try:
                    return [await self.segment(chunk[0], model, format, mask)]
                except SegmentationError as exc:
                    if exc.status in RETRIED_STATUSES:
                        raise
                    return [exc]
            response = await self._send("POST", "/segment", params=self._params(format, model, mask), files=_files(chunk))
            return _parse_many(response, format)

        parts = await asyncio.gather(*(chunk_results(c) for c in _chunks(list(images), self.images_per_request)))
        return [result for part in parts for result in part]

    async def models(self) -> dict:
        return self._checked(await self._send("GET", "/v1/models")).json()

    async def health(self) -> bool:
        try:
            return (await self.http.get("/healthz")).status_code == 200
        except httpx.TransportError:
            return False

    async def ready(self) -> bool:
        try:
            return (await self.http.get("/readyz")).status_code == 200
        except httpx.TransportError:
            return False

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> AsyncSegmentationClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()
