"""OpenTelemetry tracing against a real server on 127.0.0.1: the spans of a /segment and a /v2
request (the SDK's in-memory exporter), the client's W3C traceparent continued, the request id equal
to the trace id, and the same spans exported over OTLP/HTTP to a receiver the test runs."""

from __future__ import annotations

import gzip
import http.server
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton
from helpers import REPO, free_port, image_bytes, scene, small_net, wait_ready_in_thread
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from model import DEFAULT_MODEL
from service.backends.pytorch import TorchBackend
from service.server import build_server
from service.settings import Settings
from service.tracing import Tracing

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
STAGES = ["receive", "decode", "queue", "inference", "restore", "encode"]
GRPC_PORT = free_port()


class EndedSpans(SimpleSpanProcessor):
    """The in-memory exporter, plus a condition to wait on until a server span has ended (it ends
    after the response is sent, so the client may have its answer first)."""

    def __init__(self):
        self.exporter = InMemorySpanExporter()
        super().__init__(self.exporter)
        self.changed = threading.Condition()

    def on_end(self, span) -> None:
        super().on_end(span)
        with self.changed:
            self.changed.notify_all()

    def trace(self, trace_id: str, timeout_s: float = 30.0) -> list:
        """Every span of ``trace_id`` once its server span has ended."""

        def spans():
            return [s for s in self.exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]

        with self.changed:
            assert self.changed.wait_for(lambda: any(s.kind == SpanKind.SERVER for s in spans()), timeout_s), "no server span"
        return spans()


class OtlpReceiver(http.server.ThreadingHTTPServer):
    """A minimal OTLP/HTTP trace receiver: decodes each export request, answers success."""

    def __init__(self):
        self.spans: list[tuple[str, str]] = []  # (trace id hex, span name)

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(handler):
                body = handler.rfile.read(int(handler.headers["Content-Length"]))
                if handler.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                assert handler.path == "/v1/traces" and handler.headers["Content-Type"] == "application/x-protobuf"
                request = ExportTraceServiceRequest.FromString(body)
                self.spans += [
                    (s.trace_id.hex(), s.name) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans
                ]
                answer = ExportTraceServiceResponse().SerializeToString()
                handler.send_response(200)
                handler.send_header("Content-Type", "application/x-protobuf")
                handler.send_header("Content-Length", str(len(answer)))
                handler.end_headers()
                handler.wfile.write(answer)

            def log_message(handler, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture(scope="module")
def receiver():
    server = OtlpReceiver()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()


@pytest.fixture(scope="module")
def traced(receiver):
    """(url, recorded spans, the app's Tracing) of a real server exporting to ``receiver``."""
    settings = Settings(
        host="127.0.0.1", port=free_port(), grpc_port=GRPC_PORT, device="cpu", log_level="warning",
        tracing_exporter="otlp-http", tracing_endpoint=f"http://127.0.0.1:{receiver.server_port}/v1/traces",
    )  # fmt: skip
    server = build_server(settings, TorchBackend(net=small_net()))
    tracing = server.config.app.state.tracing
    recorded = EndedSpans()
    tracing.provider.add_span_processor(recorded)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    wait_ready_in_thread(thread, url)
    try:
        yield url, recorded, tracing
    finally:
        server.should_exit = True
        thread.join(30)


def check_request_trace(spans: list, route: str, parent_span: str | None, stages: list[str] = STAGES) -> dict:
    """The server span named after ``route`` (child of ``parent_span``) with one span per stage
    under it, in the order a request goes through them; returns the spans by name."""
    (root,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert root.name == f"POST {route}" and root.attributes["http.route"] == route
    assert root.attributes["http.response.status_code"] == 200
    if parent_span is None:
        assert root.parent is None
    else:
        assert format(root.parent.span_id, "016x") == parent_span and root.parent.is_remote
    children = [s for s in spans if s is not root]
    assert sorted(s.name for s in children) == sorted(stages)
    assert all(s.parent.span_id == root.context.span_id for s in children)
    by_name = {s.name: s for s in children}
    starts = [by_name[name].start_time for name in stages]
    assert starts == sorted(starts), "stages out of order"
    assert by_name["inference"].start_time == by_name["queue"].end_time  # the batch starts as the wait ends
    assert by_name["inference"].attributes["deeplab.batch.size"] == 1
    assert all(root.start_time <= s.start_time and s.end_time <= root.end_time for s in children)
    return by_name


def test_segment_request_continues_the_clients_trace(traced):
    url, recorded, _ = traced
    data = image_bytes(scene(0), "PNG")
    response = httpx.post(
        f"{url}/segment", content=data, headers={"content-type": "image/png", "traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01"}, timeout=60
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == TRACE_ID
    stages = check_request_trace(recorded.trace(TRACE_ID), "/segment", CLIENT_SPAN)
    assert stages["receive"].attributes["http.request.body.size"] == len(data)
    assert stages["encode"].attributes["deeplab.format"] == "png"


def test_without_traceparent_a_new_trace_whose_id_is_the_request_id(traced):
    url, recorded, _ = traced
    response = httpx.post(
        f"{url}/segment", content=image_bytes(scene(1), "PNG"),
        headers={"content-type": "image/png", "x-request-id": "client-chosen"}, timeout=60,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    trace_id = response.headers["x-request-id"]
    assert len(trace_id) == 32 and int(trace_id, 16) and trace_id != TRACE_ID
    check_request_trace(recorded.trace(trace_id), "/segment", None)


def test_protocol_infer_request_is_traced(traced):
    url, recorded, _ = traced
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    image = triton.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([image_bytes(scene(2), "JPEG")], dtype=np.object_))
    with triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=60.0) as client:
        result = client.infer(DEFAULT_MODEL, [image], headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
    assert result.as_numpy("LABELS").shape[0] == 1
    check_request_trace(recorded.trace(trace_id), "/v2/models/{name}/infer", span_id)


def test_grpc_infer_call_is_traced(traced):
    """gRPC ModelInfer: a server span continuing the metadata's traceparent, the same stages but
    ``receive`` (grpc reads the message before the call starts)."""
    _, recorded, _ = traced
    trace_id, span_id = "5bf92f3577b34da6a3ce929d0e0e4737", "c7ad6b7169203332"
    image = triton_grpc.InferInput("IMAGE", [1], "BYTES")
    image.set_data_from_numpy(np.array([image_bytes(scene(3), "JPEG")], dtype=np.object_))
    client = triton_grpc.InferenceServerClient(f"127.0.0.1:{GRPC_PORT}")
    result = client.infer(DEFAULT_MODEL, [image], headers={"traceparent": f"00-{trace_id}-{span_id}-01"})
    assert result.as_numpy("LABELS").shape[0] == 1
    route = "/inference.GRPCInferenceService/ModelInfer"
    check_request_trace(recorded.trace(trace_id), route, span_id, [s for s in STAGES if s != "receive"])


def test_probes_and_scrapes_are_not_traced(traced):
    url, recorded, _ = traced
    for path in ("/healthz", "/metrics"):
        response = httpx.get(url + path, headers={"traceparent": f"00-{'1' * 32}-{CLIENT_SPAN}-01"})
        assert response.status_code == 200 and response.headers["x-request-id"] != "1" * 32
    assert not [s for s in recorded.exporter.get_finished_spans() if s.attributes.get("url.path") in ("/healthz", "/metrics")]


def test_spans_reach_the_otlp_endpoint(traced, receiver):
    url, recorded, tracing = traced
    response = httpx.post(f"{url}/segment", content=image_bytes(scene(3), "PNG"), headers={"content-type": "image/png"}, timeout=60)
    assert response.status_code == 200
    trace_id = response.headers["x-request-id"]
    recorded.trace(trace_id)  # the server span has ended
    assert tracing.provider.force_flush(30_000)  # the batch processor exports, and waits for the answer
    assert sorted(name for t, name in receiver.spans if t == trace_id) == sorted(["POST /segment", *STAGES])


def test_otlp_grpc_exporter_reaches_its_endpoint():
    """The gRPC exporter the setting selects, against a real OTLP gRPC receiver on 127.0.0.1."""
    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    received = []

    class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
        def Export(self, request, context):
            received.extend((rs.resource.attributes, s.name) for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans)
            return ExportTraceServiceResponse()

    server = grpc.server(ThreadPoolExecutor(2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        tracing = Tracing.from_settings(Settings(tracing_exporter="otlp-grpc", tracing_endpoint=f"http://127.0.0.1:{port}"))
        tracing.tracer.start_span("probe").end()
        assert tracing.provider.force_flush(30_000)
        ((attributes, name),) = received
        assert name == "probe"
        assert {a.key: a.value.string_value for a in attributes}["service.name"] == "deeplab-serve"
        tracing.shutdown()
    finally:
        server.stop(None)


def test_shutdown_does_not_wait_for_a_collector_that_never_answers(caplog):
    """A collector that accepts the connection and never answers: shutdown gives up after its
    timeout (and says so) instead of holding the exit for the SDK's 30 s."""
    with socket.create_server(("127.0.0.1", 0)) as silent:  # listens, never accepts
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}/v1/traces"
        tracing = Tracing.from_settings(Settings(tracing_exporter="otlp-http", tracing_endpoint=endpoint))
        tracing.tracer.start_span("buffered").end()
        with caplog.at_level("WARNING", logger="service"):
            tracing.shutdown(timeout_s=0.5)
    assert [r.message for r in caplog.records if r.name == "service"] == ["tracing: spans left unexported at shutdown"]


def test_off_by_default_neither_sdk_nor_exporter_is_loaded():
    """(FastAPI itself imports the OpenTelemetry API package, for its own telemetry, which stays off
    without a global tracer provider; the service never sets one.)"""
    code = (
        "import sys; from service.app import create_app; from service.settings import Settings; "
        "app = create_app(Settings(device='cpu')); assert app.state.tracing is None; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
