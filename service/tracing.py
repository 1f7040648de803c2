"""OpenTelemetry traces of the HTTP requests, sent over OTLP; off unless ``tracing_exporter`` is set.

Per request, under the server span (``POST /segment``: started by ``service.middleware``, continuing
the client's W3C ``traceparent``): ``receive`` (the body arriving), per image ``decode`` (decode and
resize/pad to the bucket; PIXELS input: resize/pad), ``queue`` (waiting for a batch),
``inference`` (the batch computing) and ``restore`` (labels back to the image's size), then
``encode`` (the response body). With tracing on, the request id (``X-Request-ID``, in every log
line) is the trace id, so a log line leads to its trace and back.

A batch computes several requests' images at once. Each request gets its own ``inference`` span,
a child in its own trace timed as the batch ran, with the batch's size (``deeplab.batch.size``):
every trace then shows its request's whole time line on its own. The alternative, one span per
batch linked from each request, lives in a trace of its own that trace viewers show only as a
link, and the requests' time lines would have a hole where the batch ran. The batch's time is
counted once per image; the batch sizes are on ``/metrics`` too.

Off: neither the SDK nor an exporter is imported, and each hook is one context-variable read.
The provider is the app's own, not OpenTelemetry's global one, so tests can run several apps;
FastAPI's own telemetry (recent versions) stays off too, as it only starts with a global provider,
so a request has one server span. The OTLP exporter, sampler, batch processor and resource honour
the ``OTEL_*`` environment variables (headers, TLS, sampling ratio, resource attributes).
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time

from model.version import package_version

log = logging.getLogger("service")
SHUTDOWN_TIMEOUT_S = 5.0
# The tracer of the request being handled; None when tracing is off or the path is not traced.
_tracer: contextvars.ContextVar = contextvars.ContextVar("deeplab_tracer", default=None)
_NO_SPAN = contextlib.nullcontext()
# Probes and scrapes: a trace every few seconds per replica would bury the requests' traces.
UNTRACED = ("/healthz", "/readyz", "/metrics", "/v2/health/")


def traced_path(path: str) -> bool:
    return not any(path == p or (p.endswith("/") and path.startswith(p)) for p in UNTRACED)


def span(name: str, attributes: dict | None = None):
    """A child span of the request's current span (a context manager); nothing when tracing is off."""
    tracer = _tracer.get()
    if tracer is None:
        return _NO_SPAN
    return tracer.start_as_current_span(name, attributes=attributes)


async def submit(batcher, key, item):
    """``batcher.submit(key, item)``, recorded as the request's ``queue`` and ``inference`` spans
    (from the outcome's timings, once its batch has run)."""
    tracer = _tracer.get()
    if tracer is None:
        return await batcher.submit(key, item)
    from opentelemetry.trace import Status, StatusCode

    submitted = time.time_ns()
    try:
        outcome = await batcher.submit(key, item)
    except BaseException as exc:  # timed out, refused, or the client went away while queued
        queued = tracer.start_span("queue", start_time=submitted)
        queued.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        queued.end()
        raise
    batch_start = submitted + int(outcome.queue_s * 1e9)
    tracer.start_span("queue", start_time=submitted).end(end_time=batch_start)
    ran = tracer.start_span("inference", start_time=batch_start, attributes={"deeplab.batch.size": outcome.batch_size})
    ran.end(end_time=batch_start + int(outcome.inference_s * 1e9))
    return outcome


class Tracing:
    """The app's tracer provider (``provider``: add span processors to it, e.g. in tests)."""

    def __init__(self, provider):
        self.provider = provider
        self.tracer = provider.get_tracer("service")

    @classmethod
    def from_settings(cls, settings) -> Tracing | None:
        """None when ``tracing_exporter`` is ``none``; else a provider exporting over OTLP."""
        if settings.tracing_exporter == "none":
            return None
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if settings.tracing_exporter == "otlp-grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        resource = Resource.create({"service.version": package_version()})  # + OTEL_RESOURCE_ATTRIBUTES
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "deeplab-serve"}))  # unless OTEL_SERVICE_NAME
        provider = TracerProvider(resource=resource)  # sampler: OTEL_TRACES_SAMPLER, default always on
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_endpoint)))
        return cls(provider)

    def start_request(self, scope) -> RequestSpan:
        return RequestSpan(self.tracer, scope)

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Export what is still buffered, waiting at most ``timeout_s``: a collector that is down
        must not hold up the exit past the pod's grace period (the SDK would wait 30 s)."""
        exporting = threading.Thread(target=self.provider.shutdown, name="tracing-shutdown", daemon=True)
        exporting.start()
        exporting.join(timeout_s)
        if exporting.is_alive():
            log.warning("tracing: spans left unexported at shutdown", extra={"timeout_s": timeout_s})


class RequestSpan:
    """One HTTP request's server span: ``with`` it around the app; ``finish`` when answered."""

    def __init__(self, tracer, scope):
        from opentelemetry import propagate, trace

        self.tracer = tracer
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        parent = propagate.extract(carrier)  # W3C traceparent / tracestate (OTEL_PROPAGATORS)
        self.span = tracer.start_span(
            scope["method"], context=parent, kind=trace.SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        )  # fmt: skip
        self.context = trace.set_span_in_context(self.span, parent)
        self.trace_id = format(self.span.get_span_context().trace_id, "032x")
        self._tokens = None

    def __enter__(self) -> RequestSpan:
        from opentelemetry import context

        self._tokens = context.attach(self.context), _tracer.set(self.tracer)
        return self

    def __exit__(self, *exc) -> None:
        from opentelemetry import context

        context.detach(self._tokens[0])
        _tracer.reset(self._tokens[1])

    def receive(self, receive):
        """``receive`` that records a ``receive`` span from the app's first read of the body until
        its last chunk (or the client's disconnect)."""
        started, size, done = None, 0, False

        async def wrapped():
            nonlocal started, size, done
            if started is None:
                started = time.time_ns()
            message = await receive()
            if done:
                return message
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    done = True
                    self._record_receive(started, size, None)
            elif message["type"] == "http.disconnect":
                done = True
                self._record_receive(started, size, "client disconnected")
            return message

        return wrapped

    def _record_receive(self, started: int, size: int, error: str | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        received = self.tracer.start_span("receive", context=self.context, start_time=started, attributes={"http.request.body.size": size})
        if error is not None:
            received.set_status(Status(StatusCode.ERROR, error))
        received.end()

    def finish(self, status: int, route: str | None) -> None:
        from opentelemetry.trace import Status, StatusCode

        if route is not None:
            self.span.update_name(f"{self.span.name} {route}")
            self.span.set_attribute("http.route", route)
        self.span.set_attribute("http.response.status_code", status)
        if status >= 500:
            self.span.set_status(Status(StatusCode.ERROR))
        self.span.end()
