"""The FastAPI application: wiring of runtime, routes, middleware and error handlers.

``create_app(settings)`` is the only entry point; ``backend`` may be injected for the first model
(tests serve small or deliberately slow backends through the very same app).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from model.pipeline.errors import ImageError
from model.version import package_version
from service import api, security, web
from service.backends import Backend
from service.docs import add_docs
from service.errors import InvalidParameter, ServiceError, from_image_error
from service.metrics import ServiceMetrics
from service.middleware import RequestMiddleware
from service.oip import http as oip_http
from service.repository.registry import Repository
from service.settings import Settings
from service.tracing import Tracing

log = logging.getLogger("service")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _error(request: Request, status: int, code: str, detail: str, headers: dict | None = None) -> JSONResponse:
    """The service's ``{"error": code, "detail": message}``; on /v2 the protocol's ``{"error": message}``."""
    if oip_http.is_protocol_path(request.url.path):
        return oip_http.error_response(status, detail, headers)
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    log.info("refused", extra={"error": exc.code, "detail": exc.detail})
    return _error(request, exc.status, exc.code, exc.detail, exc.headers)


async def _image_error(request: Request, exc: ImageError) -> JSONResponse:
    return await _service_error(request, from_image_error(exc))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
    return await _service_error(request, InvalidParameter(detail))


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    return _error(request, exc.status_code, _HTTP_CODES.get(exc.status_code, "bad_request"), str(exc.detail), exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _error(request, 500, "internal_error", "internal error; see the server log for this request id")


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    metrics = ServiceMetrics()
    repository = Repository(settings, metrics, backend)
    tracing = Tracing.from_settings(settings)  # None unless tracing_exporter is set

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            await repository.start()
        except Exception as exc:  # the server sees start_error and shuts down (service.server)
            log.error("start-up failed", extra={"error": f"{type(exc).__name__}: {exc}"})
            log.debug("start-up failure", exc_info=exc)
            repository.start_error = exc
        yield
        await repository.stop()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # export the last spans

    app = FastAPI(
        title="DeepLabV3+ segmentation service",
        version=package_version(),
        description="POST an image to /segment; requests are batched dynamically onto the model.",
        lifespan=lifespan,
        docs_url=None,  # service.docs serves /docs and /redoc from packaged assets, not a CDN
        redoc_url=None,
        redirect_slashes=False,  # its 307 would echo the client's Host header: /segment/ is a 404
    )
    app.state.repository = repository
    app.state.tracing = tracing
    app.include_router(api.router)
    app.include_router(oip_http.router)  # the Open Inference Protocol under /v2
    app.include_router(web.router)  # the page at / and its live panel's /v1/stats (service.web)
    add_docs(app)
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(ImageError, _image_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
    security.install(app, settings)  # API keys, CORS, security headers: inside the request log
    app.add_middleware(RequestMiddleware, metrics=metrics, tracing=tracing)
    return app
