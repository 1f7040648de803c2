"""Per-request bookkeeping around every endpoint: request id, access log (with the API key's name
when auth is on), request metrics, and with tracing on the request's server span
(``service.tracing``), whose trace id is then the request id.

A plain ASGI middleware rather than ``BaseHTTPMiddleware``: it adds no task per request, and
``receive`` reaches the app unchanged (with tracing on, wrapped only to time the body), so the
/segment handler can still see the client's disconnect.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
import uuid

from service.logs import request_id
from service.metrics import ServiceMetrics
from service.tracing import Tracing, traced_path

log = logging.getLogger("service.access")
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class RequestMiddleware:
    def __init__(self, app, metrics: ServiceMetrics, tracing: Tracing | None = None):
        self.app = app
        self.metrics = metrics
        self.tracing = tracing

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        trace = None
        if self.tracing is not None and traced_path(scope["path"]):
            trace = self.tracing.start_request(scope)
            rid, receive = trace.trace_id, trace.receive(receive)
        else:
            given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
            rid = given if _SAFE_ID.match(given) else uuid.uuid4().hex  # never echo arbitrary bytes
        token = request_id.set(rid)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.inflight.inc()
        try:
            with trace or contextlib.nullcontext():
                await self.app(scope, receive, send_with_id)
        finally:
            self.metrics.inflight.dec()
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = route.path if route is not None else None
            endpoint = route_path or "unmatched"
            if trace is not None:
                trace.finish(status, route_path)
            self.metrics.requests.labels(endpoint, str(status)).inc()
            self.metrics.request_duration.labels(endpoint).observe(elapsed)
            fields = {"method": scope["method"], "path": scope["path"], "status": status, "duration_ms": round(elapsed * 1e3, 2)}
            if "user" in scope:  # the API key's name (service.auth), never the key
                fields["api_key"] = scope["user"].display_name
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, elapsed * 1e3, extra=fields)
            request_id.reset(token)
