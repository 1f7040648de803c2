"""What can be wrong with an image a caller hands the pipeline, one exception type each.

The pipeline knows nothing of HTTP: the service maps each type to a status in `service.errors`.
All derive from `ValueError`, so library callers can catch bad input without importing these.
"""

from __future__ import annotations


class ImageError(ValueError):
    """Base of every refusal of an input image; ``str(exc)`` says what is wrong."""


class EmptyImage(ImageError):
    """No bytes at all."""


class CorruptImage(ImageError):
    """A supported format's signature, but an unreadable header or truncated/corrupt data."""


class UnsupportedImage(ImageError):
    """Not an image, or a format we do not decode."""


class ImageTooLarge(ImageError):
    """More pixels than the caller's limit (decided from the header, before decoding)."""


class BadDimensions(ImageError):
    """Zero-sized, or so elongated that the model's test resize would leave nothing."""
