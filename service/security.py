"""What browsers are told: security headers on every response, CORS (off unless origins are set),
and the wiring of these and of API-key auth (service.auth) around the app.

The responses are JSON and images, never pages to render (only /docs and /redoc are, and the web
page at /, and they set their own policy in service.docs and service.web), so the default
Content-Security-Policy allows nothing at all.
"""

from __future__ import annotations

import base64
import hashlib

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from service import auth
from service.errors import CorsRefused

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
HEADERS = {
    "x-content-type-options": "nosniff",  # a PNG stays a PNG, never sniffed into HTML
    "x-frame-options": "DENY",  # for browsers without CSP frame-ancestors
    "referrer-policy": "no-referrer",
    "content-security-policy": API_CSP,
}
# Headers a browser's script may read on a cross-origin response (the timing and size headers).
EXPOSED = ["X-Request-ID", "X-Batch-Size", "X-Queue-Ms", "X-Inference-Ms", "X-Total-Ms", "X-Height", "X-Width", "Retry-After"]


def page_csp(inline_scripts: list[str] = (), allow_eval: bool = False) -> str:
    """The policy of a documentation page: its own assets, its inline scripts by hash, fetches to
    this origin only (the spec, "try it out"), and the inline styles and data: images Swagger UI and
    ReDoc render. ``allow_eval``: ReDoc's bundled JSON-schema compiler (ajv) builds functions."""
    sources = ["'self'"] + (["'unsafe-eval'"] if allow_eval else [])
    sources += [f"'sha256-{base64.b64encode(hashlib.sha256(s.encode()).digest()).decode()}'" for s in inline_scripts]
    return (
        f"default-src 'none'; script-src {' '.join(sources)}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


class SecurityHeadersMiddleware:
    """Adds ``HEADERS`` to every response, keeping any a route set itself (the docs pages' CSP)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k.encode(), v.encode()) for k, v in HEADERS.items() if k.encode() not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class JSONCORSMiddleware(CORSMiddleware):
    """Starlette's CORS, with a refused preflight answered in the service's JSON error form."""

    def preflight_response(self, request_headers):
        response = super().preflight_response(request_headers)
        if response.status_code != 400:
            return response
        refused = response.body.decode().removeprefix("Disallowed CORS ")  # e.g. "origin, headers"
        error = CorsRefused(f"CORS preflight refused: {refused} not allowed (see cors_origins)")
        kept = {k: v for k, v in response.headers.items() if k not in ("content-length", "content-type")}
        return JSONResponse({"error": error.code, "detail": error.detail}, error.status, kept)


def install(app: FastAPI, settings) -> None:
    """Add auth (innermost), CORS, then the headers (outermost): a preflight needs no key, and a
    401 still carries CORS and security headers, so a browser app can read why it was refused."""
    keys = auth.KeyRing.from_settings(settings)
    if keys is not None:
        app.add_middleware(auth.AuthMiddleware, keys=keys, exempt=settings.auth_exempt_paths, rate_per_key=settings.rate_limit_per_key)
        auth.document(app, settings.auth_exempt_paths)
    if settings.cors_origins:
        app.add_middleware(
            JSONCORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=EXPOSED,
            max_age=600,
        )
    app.add_middleware(SecurityHeadersMiddleware)
