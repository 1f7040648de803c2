"""The Open Inference Protocol's HTTP/REST routes under ``/v2`` (KServe v2, as Triton serves it).

Errors on these paths are rendered in the protocol's ``{"error": message}`` form by the app's
handlers (``service.app``) with the statuses /segment uses: 400 bad tensors, 404 unknown model,
413 too large, 429 queue full, 503 not ready or memory busy, 504 queued too long; the repository
extension (``control``) adds 403 (model control off, or no admin key) and 507 (a load that does not
fit the device's memory).
"""

from __future__ import annotations

import json

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from model.version import package_version
from service.api import ReleasedWhenSent
from service.errors import BadRequest, NotReady, UnsupportedMediaType, UploadTooLarge
from service.oip import contract, control, infer, wire
from service.oip.models import lookup, repository, server_ready

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol"])
CLIENT_CLOSED_REQUEST = 499
PREFIX = "/v2"


class ProtocolError(BaseModel):
    error: str


def _errors(*statuses: int) -> dict:
    return {s: {"model": ProtocolError} for s in statuses}


_NAMED = _errors(404, 503)
_INFER_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON inference request, or (binary tensor data extension) the JSON header followed by "
        "the tensors' bytes, its length in the Inference-Header-Content-Length header",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {"type": "object"},
                        "inputs": {"type": "array", "items": {"type": "object", "required": ["name", "datatype", "shape"], "properties": {
                            "name": {"type": "string"}, "datatype": {"type": "string"},
                            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                            "parameters": {"type": "object"}, "data": {"type": "array"},
                        }}},  # fmt: skip
                        "outputs": {"type": "array", "items": {"type": "object", "required": ["name"], "properties": {
                            "name": {"type": "string"}, "parameters": {"type": "object"},
                        }}},  # fmt: skip
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
_INFER_RESPONSES = {
    200: {
        "description": "JSON inference response; with binary outputs, the JSON header (its length in "
        "Inference-Header-Content-Length) followed by the outputs' bytes",
        "content": {"application/json": {"schema": {"type": "object"}}, "application/octet-stream": {}},
    },
    **_errors(400, 404, 413, 415, 429, 503, 504),
}


@router.get("", summary="Server metadata: name, version and protocol extensions")
async def server_metadata() -> dict:
    return contract.server_metadata(package_version())


@router.get("/health/live", summary="Liveness: the process is serving HTTP")
async def live() -> dict:
    return {"live": True}


@router.get("/health/ready", summary="Readiness: every model loaded and warmed up, not draining", responses=_errors(503))
async def ready(request: Request) -> dict:
    if not server_ready(request.app):
        raise NotReady("not ready: loading or draining")
    return {"ready": True}


async def _model_metadata(request: Request, name: str, version: str | None = None) -> dict:
    runtime = lookup(request.app, name, version)
    return contract.model_metadata(name, repository(request.app).versions(name), contract.platform(runtime.backend.name))


async def _model_ready(request: Request, name: str, version: str | None = None) -> dict:
    lookup(request.app, name, version).require_ready()
    return {"name": name, "ready": True}


async def _model_config(request: Request, name: str, version: str | None = None) -> dict:
    runtime = lookup(request.app, name, version)
    return contract.model_config(name, repository(request.app).versions(name), contract.platform(runtime.backend.name))


for path, endpoint, summary in [
    ("/models/{name}", _model_metadata, "Model metadata: versions, platform and the tensor contract"),
    ("/models/{name}/ready", _model_ready, "Model readiness"),
    ("/models/{name}/config", _model_config, "Triton model configuration (max_batch_size 0: the batch is dim -1)"),
]:
    router.add_api_route(path, endpoint, methods=["GET"], summary=summary, responses=_NAMED)
    versioned = path.replace("{name}", "{name}/versions/{version}")
    router.add_api_route(versioned, endpoint, methods=["GET"], summary=f"{summary} (one version)", responses=_NAMED)


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(f"request body is {declared} bytes; the limit is {limit}")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > limit:
            raise UploadTooLarge(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _response_head(name: str, version: str, doc: dict) -> dict:
    request_id = doc.get("id")
    return {"model_name": name, "model_version": version, **({"id": request_id} if isinstance(request_id, str) else {})}


async def _infer(request: Request, name: str, version: str | None = None) -> Response:
    runtime = lookup(request.app, name, version)
    async with runtime.admit():  # 503 / 429 before the body is read, counted for the drain
        if request.headers.get("content-encoding", "identity").lower() != "identity":
            raise UnsupportedMediaType("compressed request bodies are not accepted: send identity encoding")
        try:
            body = await _read_body(request, runtime.settings.max_upload_bytes)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED_REQUEST)
        doc, inputs = wire.parse_request(body, request.headers.get(wire.HEADER_LENGTH))
        images, wanted = contract.images_of(inputs), contract.wanted_outputs(doc)
        reservations = infer.reserve(runtime, images, wanted)  # 413 / 429 / 503 before any work
        try:
            outputs = await infer.outputs(runtime, images, wanted, reservations)
            content, headers = await runtime.encode(wire.encode_response, _response_head(name, runtime.version, doc), outputs)
        except BaseException:
            for reservation in reservations:
                reservation.release()
            raise
        return ReleasedWhenSent(Response(content, headers=headers), reservations)


for path in ("/models/{name}/infer", "/models/{name}/versions/{version}/infer"):
    router.add_api_route(
        path, _infer, methods=["POST"], summary="Inference: IMAGE or PIXELS in, LABELS and/or LABELS_PNG out",
        response_class=Response, responses=_INFER_RESPONSES, openapi_extra=_INFER_BODY,
    )  # fmt: skip


async def _control_body(request: Request) -> dict:
    """The repository call's JSON body (may be empty), after the caller is allowed (403)."""
    settings = repository(request.app).settings
    control.require_allowed(settings, "admin" in getattr(request.scope.get("auth"), "scopes", ()))
    body = await _read_body(request, 1 << 20)
    try:
        doc = json.loads(body) if body.strip() else {}
    except json.JSONDecodeError as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("parameters", {}), dict):
        raise BadRequest("request body must be a JSON object; its parameters an object")
    return doc


_CONTROL = _errors(400, 403, 404, 503, 507)


@router.post("/repository/index", summary="Models of the repository and their state (READY, LOADING, UNAVAILABLE)", responses=_CONTROL)
async def repository_index(request: Request) -> list[dict]:
    doc = await _control_body(request)
    rows = repository(request.app).index()
    return [r for r in rows if r["state"] == "READY"] if doc.get("ready") else rows


@router.post("/repository/models/{name}/load", summary="Load or replace a model from the repository (parameters.config: JSON model settings)", responses=_CONTROL)
async def repository_load(request: Request, name: str) -> dict:
    doc = await _control_body(request)
    await repository(request.app).control("load", name, control.load_config(doc.get("parameters", {})))
    return {}


@router.post("/repository/models/{name}/unload", summary="Unload a model once its accepted requests are answered", responses=_CONTROL)
async def repository_unload(request: Request, name: str) -> dict:
    await _control_body(request)
    await repository(request.app).control("unload", name)
    return {}


def error_response(status: int, detail: str, headers: dict | None = None) -> JSONResponse:
    """The protocol's error form, for the app's exception handlers on ``/v2`` paths."""
    return JSONResponse({"error": detail}, status_code=status, headers=headers)


def is_protocol_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")

