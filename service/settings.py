"""One settings object for the whole service, read from ``DEEPLAB_*`` environment variables.

pydantic-settings gives typed, validated settings from the environment (the way containers and
Kubernetes ConfigMaps configure us); the CLI in ``service.__main__`` overrides the same fields, so
there is exactly one list of knobs. The object is passed explicitly (no module globals) so tests
can run several differently configured apps in one process.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.backends import default_device


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEEPLAB_", extra="ignore")

    model: str | None = Field(
        None,
        description="config name, checkpoint (.pth/.safetensors), .onnx or .engine/.plan file; "
        "unset = the built-in default model",
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto", description="inference backend; auto = chosen from the model file's extension"
    )
    device: str = Field(default_factory=default_device, description="cpu, cuda or cuda:N")
    precision: Literal["fp32", "fp16", "bf16", "fp8"] = Field(
        "fp32", description="fp8 (Hopper GPUs, torch backend): fp16 with the ASPP's bottleneck conv in e4m3"
    )
    cuda_graphs: bool = Field(
        True,
        description="torch backend on CUDA, whole-image models: capture each warmed-up batch shape as "
        "a CUDA graph and replay it (one launch per batch instead of ~150)",
    )
    max_batch_size: int = Field(8, ge=1, le=256)
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
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"
    drain_timeout_s: float = Field(
        25.0, gt=0, description="after SIGTERM, how long queued/in-flight requests may take"
    )
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=0, le=65535)
