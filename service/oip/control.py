"""The protocol's model-repository extension (index, load, unload) for HTTP and gRPC alike: who
may call it and how its parameters read. Off unless ``enable_model_control``; with auth on, only
an admin key (``admin_key_hashes``) may call it, whatever ``auth_exempt_paths`` says.
"""

from __future__ import annotations

import json

from service.errors import BadRequest, Forbidden
from service.settings import Settings


def auth_on(settings: Settings) -> bool:
    return bool(settings.api_keys_file or settings.api_key_hashes or settings.admin_key_hashes)


def require_allowed(settings: Settings, admin: bool) -> None:
    """403 unless model control is enabled and, with auth on, the caller's key is an admin key."""
    if not settings.enable_model_control:
        raise Forbidden("model control is off: start the server with --enable-model-control")
    if auth_on(settings) and not admin:
        raise Forbidden("model control needs an admin key (admin_key_hashes)")


def load_config(parameters: dict) -> dict | None:
    """A load request's ``config`` parameter (Triton's: a JSON object as text) as per-model
    settings such as ``{"max_batch_size": 16}`` (checked by ``specs.ModelFile``)."""
    text = parameters.get("config")
    if text is None:
        return None
    try:
        config = json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError as exc:
        raise BadRequest(f"parameter 'config' is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise BadRequest("parameter 'config' must be a JSON object of model settings")
    return config
