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


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class UploadTooLarge(ServiceError):
    status, code = 413, "upload_too_large"


class ImageTooLarge(ServiceError):
    status, code = 413, "image_too_large"


class BadDimensions(ServiceError):
    status, code = 422, "bad_dimensions"


class InvalidParameter(ServiceError):
    status, code = 422, "invalid_parameter"


class QueueFull(ServiceError):
    status, code = 429, "queue_full"

    def __init__(self, detail: str, retry_after_s: int = 1):
        super().__init__(detail)
        self.headers = {"Retry-After": str(retry_after_s)}


class NotReady(ServiceError):
    status, code = 503, "not_ready"
    headers = {"Retry-After": "1"}


class QueueTimeout(ServiceError):
    status, code = 504, "queue_timeout"


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
