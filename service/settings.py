"""One settings object for the whole service, read from ``DEEPLAB_*`` environment variables.

pydantic-settings gives typed, validated settings from the environment (the way containers and
Kubernetes ConfigMaps configure us); the CLI in ``service.__main__`` overrides the same fields, so
there is exactly one list of knobs. The object is passed explicitly (no module globals) so tests
can run several differently configured apps in one process.
"""

from __future__ import annotations

import typing
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.precision import Precision
from service.backends import AUTO, BACKENDS, default_device

BackendChoice = Literal[(AUTO, *BACKENDS)]
PrecisionChoice = Literal[(AUTO, *(p.value for p in Precision))]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPLAB_", extra="ignore")

    model: str | None = Field(
        None,
        description="config name, checkpoint (.pth/.safetensors), .onnx or .engine/.plan file",
    )
    backend: BackendChoice = Field(
        AUTO, description="inference backend; auto = chosen from the model file's extension"
    )
    device: str = Field(default_factory=default_device, description="cpu, cuda or cuda:N")
    precision: PrecisionChoice = Field(
        AUTO,
        description="auto = the best the backend runs on this device (torch: fp16 on CUDA, fp32 on CPU; "
        "onnxruntime: fp32; tensorrt: the engine's); fp8 (Hopper GPUs, torch backend): fp16 with the "
        "ASPP's bottleneck conv in e4m3; a precision the backend cannot run is refused at load",
    )
    cuda_graphs: bool = Field(
        True,
        description="torch backend on CUDA, whole-image models: capture each warmed-up batch shape as "
        "a CUDA graph and replay it (one launch per batch instead of ~150)",
    )
    max_batch_size: int = Field(8, ge=1, le=256, description="images per batch")
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
    decode_threads: int = Field(4, ge=1, description="threads for decoding and PNG/JPEG encoding")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log threshold")
    log_format: Literal["json", "text"] = Field("json", description="json lines (with request_id) or plain text")
    drain_timeout_s: float = Field(
        25.0, gt=0, description="after SIGTERM, how long queued/in-flight requests may take"
    )
    host: str = Field("0.0.0.0", description="address to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on (0 = any free port)")


#: defaults computed at start-up, described rather than shown with this machine's value
_DEFAULT_TEXT = {"model": "the built-in model", "device": "cuda if available, else cpu"}


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
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The settings table of service/README.md (a test keeps the README equal to it)."""
    rows = ["| flag / env | default | choices | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        choices = ", ".join(f"`{c}`" for c in choices_of(name) or [])
        flag = f"`--{name.replace('_', '-')}` / `DEEPLAB_{name.upper()}`"
        rows.append(f"| {flag} | `{default_text(name)}` | {choices} | {field.description} |")
    return "\n".join(rows) + "\n"
