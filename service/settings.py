"""One settings object for the whole service, read from ``DEEPLAB_*`` environment variables.

pydantic-settings gives typed, validated settings from the environment (the way containers and
Kubernetes ConfigMaps configure us); the CLI in ``service.__main__`` overrides the same fields, so
there is exactly one list of knobs. The object is passed explicitly (no module globals) so tests
can run several differently configured apps in one process.
"""

from __future__ import annotations

import json
import typing
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, StringConstraints
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.precision import Precision
from service.backends import AUTO, BACKENDS, default_device

BackendChoice = Literal[(AUTO, *BACKENDS)]
PrecisionChoice = Literal[(AUTO, *(p.value for p in Precision))]


def _list_from_text(value):
    """A list setting from the environment or a CLI flag: a JSON list or comma-separated text."""
    if isinstance(value, str):
        text = value.strip()
        return json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):  # a repeated CLI flag
        return [item for v in value for item in _list_from_text(v)]
    return value


def _text_list(item_pattern: str):
    return Annotated[list[Annotated[str, StringConstraints(pattern=item_pattern)]], NoDecode, BeforeValidator(_list_from_text)]


KeyDigests = _text_list(r"^([^:\s]+:)?[0-9a-fA-F]{64}$")  # NAME:SHA256HEX or SHA256HEX
Paths = _text_list(r"^/")
ModelEntries = _text_list(r"^\S")
Origins = _text_list(r"^(\*|https?://[^/\s]+)$")  # scheme://host[:port], no path: browsers send it so


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPLAB_", extra="ignore")

    model: ModelEntries = Field(
        [],
        description="model(s) to serve, the first being the default of /segment: each a config name, checkpoint "
        "(.pth/.safetensors), .onnx or .engine/.plan file, served under its config's name, or NAME=that to "
        "choose the name; repeat the flag (env: comma-separated or a JSON list); none = the built-in model "
        "unless model_repository is set",
    )
    model_repository: Path | None = Field(
        None,
        description="folder with one subfolder per model (its file, optional config.toml, numbered version "
        "folders: service/README.md); every model in it is loaded at start, after the --model ones",
    )
    enable_model_control: bool = Field(
        False,
        description="allow POST /v2/repository/models/NAME/load and /unload (HTTP and gRPC): add, replace or "
        "remove a model without a restart; with auth on they need an admin key",
    )
    backend: BackendChoice = Field(
        AUTO, description="inference backend; auto = chosen from the model file's extension"
    )
    device: str = Field(
        default_factory=default_device, description="cpu, cuda:N, or cuda = every visible GPU (one replica of "
        "each model per GPU behind one batcher), or a list such as cuda:0,cuda:1",
    )
    precision: PrecisionChoice = Field(
        AUTO,
        description="auto = the best the backend runs on this device (torch: fp16 on CUDA; on a CPU bf16 where it has bf16 instructions, AVX512-BF16 or AMX, else fp32; "
        "onnxruntime: fp32; tensorrt: the engine's); fp8 (Hopper GPUs, torch backend): fp16 with the "
        "ASPP's bottleneck conv in e4m3; a precision the backend cannot run is refused at load",
    )
    cuda_graphs: bool = Field(
        True,
        description="torch backend on CUDA, whole-image models: capture each warmed-up batch shape as "
        "a CUDA graph and replay it (one launch per batch instead of ~150)",
    )
    tta: bool = Field(
        False, description="multi-scale (0.5-1.75) + flip test-time augmentation, mmseg's aug test on the "
        "test-scale image: 12 passes per image (cost: bench/RESULTS.md); torch backend, whole-image configs",
    )
    test_scale: str | None = Field(
        None, pattern=r"^[1-9][0-9]{1,4}x[1-9][0-9]{1,4}$", description="WxH box each image is resized into "
        "(keeping its aspect ratio) for inference, instead of the model's own (a checkpoint may record one: the "
        "built-in model's is 480x360, its photos' size; 840x630 is compared in model/weights/README.md); torch backend",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="images per batch")
    instances: int | None = Field(
        None, ge=1, le=8, description="batches of one model computed at once, each from its own inference "
        "thread; unset = the backend's choice (2 with CUDA graphs, else 1)",
    )
    max_queue_delay_ms: float = Field(
        10.0, ge=0, description="longest a request waits for batch-mates before its batch runs"
    )
    queue_capacity: int = Field(64, ge=1, description="queued images beyond this get 429")
    request_timeout_s: float = Field(
        30.0, gt=0, description="a request still queued after this long gets 504"
    )
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="request body limit (413)")
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="width*height limit read from the header before decoding"
    )
    max_images_per_request: int = Field(
        16, ge=1, le=256, description="images one multipart /segment request may carry (repeated `image` "
        "fields, answered together as JSON); more -> 413. Each image is admitted like a request of its own",
    )
    memory_budget_bytes: int | None = Field(
        None,
        ge=1,
        description="bytes the requests in flight may reserve; each reserves its estimated peak (from the "
        "header, before decoding: image, labels, the format's encoding buffers); over it -> 503 + "
        "Retry-After, one image over all of it -> 413",
    )
    memory_budget_fraction: float = Field(
        0.5, gt=0, le=1, description="when memory_budget_bytes is unset: this fraction of the container's "
        "memory limit (cgroup, else RAM) minus the process's size after warm-up",
    )
    queue_capacity_pixels: int | None = Field(
        None,
        ge=1,
        description="model input pixels (bucket areas) of the images decoding or queued; beyond -> 429, "
        "decided from the header before decoding; unset = queue_capacity full-size buckets",
    )
    jpeg_draft_decode: bool = Field(
        True,
        description="decode JPEGs at least 2x the test scale straight to about that size (libjpeg DCT "
        "scaling): far less memory and time, labels nearly identical; not for format=overlay",
    )
    decode_threads: int = Field(4, ge=1, description="threads for decoding and PNG/JPEG encoding")
    workers: int = Field(
        1, ge=1, le=64, description="server processes sharing the port, each with its own copy of the models "
        "and a share of the memory budget (one Python process's request handling caps small images well "
        "below a GPU's rate); readiness, metrics (label worker), model control and SIGTERM act for all",
    )
    cache_dir: Path | None = Field(
        None, description="compiled GPU kernels (Triton's cache) are kept here across restarts (mount a volume): "
        "a warm cache makes start-up seconds faster; unset = TRITON_CACHE_DIR if set, else ~/.triton/cache",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log threshold")
    log_format: Literal["json", "text"] = Field("json", description="json lines (with request_id) or plain text")
    tracing_exporter: Literal["none", "otlp-http", "otlp-grpc"] = Field(
        "none", description="OpenTelemetry traces of each request (spans receive, decode, queue, inference, "
        "restore, encode; a W3C traceparent is continued; the request id becomes the trace id) sent over OTLP; "
        "none = off, at no cost. OTEL_* variables (headers, sampler, resource) apply",
    )
    tracing_endpoint: str | None = Field(
        None, description="the OTLP traces endpoint, e.g. http://collector:4318/v1/traces (otlp-http) or "
        "http://collector:4317 (otlp-grpc)",
    )
    drain_timeout_s: float = Field(
        25.0, gt=0, description="after SIGTERM, how long queued/in-flight requests may take"
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0 = any free port)")
    grpc_port: int = Field(
        8001, ge=0, le=65535, description="port of the Open Inference Protocol over gRPC "
        "(inference.GRPCInferenceService), on the same host; 0 = gRPC off",
    )
    grpc_max_message_bytes: int = Field(
        64 * 1024 * 1024, ge=4 * 1024 * 1024, description="largest gRPC message received or sent (a "
        "request's images, a response's label maps); grpc's own default of 4 MiB does not fit a batch of "
        "images; larger -> RESOURCE_EXHAUSTED",
    )
    api_keys_file: Path | None = Field(
        None,
        description="API keys, one `NAME:SHA256HEX` line each (`python -m service.auth new NAME` makes one); "
        "this or a key digest below turns auth on: requests need `Authorization: Bearer KEY` or `X-API-Key: KEY`, "
        "else 401",
    )
    api_key_hashes: KeyDigests = Field(
        [], description="API keys as SHA-256 hex digests (`NAME:` prefix optional), comma-separated or a JSON list"
    )
    admin_key_hashes: KeyDigests = Field(
        [], description="keys that may also use model-control endpoints (same form); they are API keys too"
    )
    auth_exempt_paths: Paths = Field(
        ["/healthz", "/readyz", "/metrics", "/v2/health/", "/", "/ui/"],
        description="paths served without a key when auth is on (probes, Prometheus, the web page and its "
        "files: the page's API calls send the key typed into it); an entry ending in / covers every path "
        "under it, except / itself, which is the page alone",
    )
    rate_limit_per_key: float = Field(
        0.0, ge=0, description="requests per second each API key may make, bursts of one second's worth "
        "(at least 1); beyond -> 429 + Retry-After; 0 = unlimited",
    )
    cors_origins: Origins = Field(
        [], description="origins browsers may call the API from (CORS), e.g. https://app.example.com, "
        "or *; empty = CORS off",
    )
    max_header_bytes: int = Field(
        16 * 1024, ge=1024, description="request line and headers (and a chunked body's framing or trailers) "
        "beyond this many bytes get 431 before they are buffered",
    )
    max_header_count: int = Field(100, ge=1, description="requests with more headers get 431")
    header_timeout_s: float = Field(
        10.0, gt=0, description="a request's line and headers must arrive within this, counted from its "
        "first byte (or the connection's start) -> else 408 and closed (slowloris)",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="a request body that makes no progress for this long while the server "
        "reads it gets 408 and the connection is closed",
    )
    body_min_rate_bytes_s: int = Field(
        1024, ge=0, description="a request body must average this many bytes per second beyond its first "
        "body_timeout_s, else 408 and closed (a trickle would hold a connection for days); 0 = no minimum",
    )
    keepalive_timeout_s: float = Field(5.0, gt=0, description="an idle keep-alive connection is closed after this")
    max_connections: int = Field(
        1000, ge=1, description="open connections beyond this get 503 + Retry-After on their request "
        "(/healthz excepted)",
    )


#: defaults computed at start-up, described rather than shown with this machine's value
_DEFAULT_TEXT = {
    "model": "the built-in model",
    "model_repository": "none",
    "cache_dir": "none (Triton's default)",
    "instances": "the backend's choice",
    "device": "cuda if available, else cpu",
    "api_keys_file": "none (auth off unless key digests are set)",
    "memory_budget_bytes": "from the container's memory limit",
    "queue_capacity_pixels": "queue_capacity full buckets",
    "tracing_endpoint": "OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost",
}


def choices_of(name: str) -> list[str] | None:
    """The allowed values of a setting with a fixed set (None for free-form ones)."""
    annotation = Settings.model_fields[name].annotation
    if annotation is bool:
        return ["true", "false"]
    if typing.get_origin(annotation) is Literal:
        return [str(v) for v in typing.get_args(annotation)]
    return None


def default_text(name: str) -> str:
    if name in _DEFAULT_TEXT:
        return _DEFAULT_TEXT[name]
    value = Settings.model_fields[name].default
    if isinstance(value, list):  # in the form the flag and variable take
        return ",".join(value) if value else "(empty)"
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The settings table of service/README.md (a test keeps the README equal to it)."""
    rows = ["| flag / env | default | choices | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        choices = ", ".join(f"`{c}`" for c in choices_of(name) or [])
        flag = f"`--{name.replace('_', '-')}` / `DEEPLAB_{name.upper()}`"
        rows.append(f"| {flag} | `{default_text(name)}` | {choices} | {field.description} |")
    return "\n".join(rows) + "\n"
