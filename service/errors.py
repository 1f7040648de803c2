"""Every failure a client can cause, one exception type each, mapped to an HTTP status here only.

The API layer raises these (and the image pipeline's `model.pipeline.errors`, translated by
`from_image_error`); a single exception handler turns them into a JSON body
``{"error": <code>, "detail": <message>}``, so clients always get a 4xx/5xx they can parse and the
process never dies on bad input.
"""

from __future__ import annotations

from model.pipeline import errors as image


class ServiceError(Exception):
    """Base: ``status`` is the HTTP status, ``code`` a stable machine-readable name."""

    status = 500
    code = "internal_error"
    headers: dict[str, str] = {}

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class EmptyBody(ServiceError):
    status, code = 400, "empty_body"


class CorruptImage(ServiceError):
    status, code = 400, "corrupt_image"


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class ModelNotFound(ServiceError):
    """A model name or version the server does not serve (Open Inference Protocol, service.oip)."""

    status, code = 404, "model_not_found"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class UploadTooLarge(ServiceError):
    status, code = 413, "upload_too_large"


class TooManyImages(ServiceError):
    """More ``image`` fields in one /segment request than ``max_images_per_request`` (or the queue) allows."""

    status, code = 413, "too_many_images"


class ImageTooLarge(ServiceError):
    status, code = 413, "image_too_large"


class BadDimensions(ServiceError):
    status, code = 422, "bad_dimensions"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class Unauthorized(ServiceError):
    """No API key, or one that matches no configured digest (service.auth)."""

    status, code = 401, "unauthorized"

    def __init__(self, detail: str, challenge: str = "Bearer"):
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": challenge}


class CorsRefused(ServiceError):
    """A CORS preflight from an origin, method or header that is not allowed (service.security)."""

    status, code = 400, "cors_refused"


class RateLimited(ServiceError):
    """The API key's token bucket is empty (``rate_limit_per_key``)."""

    status, code = 429, "rate_limited"

    def __init__(self, detail: str, retry_after_s: int = 1):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class QueueFull(ServiceError):
    status, code = 429, "queue_full"

    def __init__(self, detail: str, retry_after_s: int = 1):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class MemoryBusy(ServiceError):
    """The memory budget is taken by requests in flight: retry once they are answered."""

    status, code = 503, "memory_busy"
    headers = {"Retry-After": "1"}


class NotReady(ServiceError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class QueueTimeout(ServiceError):
    status, code = 504, "queue_timeout"


# Refused by the HTTP front (service.front) before the request reaches the app.
class HeadersTooLarge(ServiceError):
    status, code = 431, "headers_too_large"


class RequestTimeout(ServiceError):
    status, code = 408, "request_timeout"


class TooManyConnections(ServiceError):
    status, code = 503, "too_many_connections"
    headers = {"Retry-After": "1"}


class MethodNotAllowed(ServiceError):
    status, code = 405, "method_not_allowed"


class Forbidden(ServiceError):
    """Model control while it is off, or without an admin key when auth is on."""

    status, code = 403, "forbidden"


class ModelLoadFailed(ServiceError):
    """A model-control load whose files, config or weights are wrong; the served models are untouched."""

    status, code = 400, "model_load_failed"


class InsufficientMemory(ServiceError):
    """A model-control load that would not fit in the device's free memory; nothing was changed."""

    status, code = 507, "insufficient_memory"


_FROM_IMAGE_ERROR: dict[type[image.ImageError], type[ServiceError]] = {
    image.EmptyImage: EmptyBody,
    image.CorruptImage: CorruptImage,
    image.UnsupportedImage: UnsupportedMediaType,
    image.ImageTooLarge: ImageTooLarge,
    image.BadDimensions: BadDimensions,
}


def from_image_error(exc: image.ImageError) -> ServiceError:
    """The service's error for a refusal of the image pipeline (400 if a new kind appears)."""
    kind = next((cls for cls in type(exc).__mro__ if cls in _FROM_IMAGE_ERROR), None)
    return (_FROM_IMAGE_ERROR[kind] if kind else CorruptImage)(str(exc))
