"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside ``/v2``.

The message and servicer classes are the ones Triton's maintained client ships, generated from
the protocol's published .proto (``tritonclient.grpc.service_pb2`` / ``model_config_pb2`` /
``service_pb2_grpc``); nothing here defines a message. The server is ``grpc.aio`` on uvicorn's
event loop, so a gRPC request goes through the same runtime, admission, dynamic batcher and
limits as HTTP (``contract``, ``models``, ``infer``), and the drain counts it.

``ModelInfer`` takes ``IMAGE`` (BYTES: ``raw_input_contents``, each element a 4-byte little-endian
length + the file, or ``contents.bytes_contents``) or ``PIXELS`` (UINT8) and answers every output
in ``raw_output_contents``. Unknown request parameters are ignored. The repository calls
(``control``) need ``enable_model_control`` and, with auth on, an admin key. Errors map to status
codes in ``STATUS``. ``ModelInfer``'s answer is serialized in the codec pool and handed to grpc as
bytes (``infer_handler``): protobuf copying each 2 MB label map on the event loop, several times,
made gRPC far slower than HTTP under load (``bench.grpc_overhead``, bench/results/grpc_*.json).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid

import grpc
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from model.pipeline.errors import ImageError
from model.version import package_version
from service import auth
from service.logs import request_id
from service.errors import BadRequest, NotReady, ServiceError, from_image_error
from service.oip import contract, control, infer, wire
from service.oip.models import lookup, repository, server_ready
from service.settings import Settings

log = logging.getLogger("service")
SERVICE = "inference.GRPCInferenceService"

#: the service's HTTP status -> gRPC status. 413 (an image or a request too large for the limits)
#: is INVALID_ARGUMENT: retrying cannot help; a message over ``grpc_max_message_bytes`` gets
#: grpc's own RESOURCE_EXHAUSTED before it reaches us.
STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
    507: grpc.StatusCode.RESOURCE_EXHAUSTED,
}
_CONTENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents"}  # the contract's datatypes


def _rpc(method):
    """Auth, then the method; a client failure becomes its status code with the message (and
    ``retry-after`` in the trailers when HTTP would send Retry-After), anything else INTERNAL."""

    @functools.wraps(method)
    async def wrapper(self, request, context):
        trace = self.trace(method.__name__, context)
        token = request_id.set(trace.trace_id if trace is not None else uuid.uuid4().hex)
        status = 200
        try:
            with trace or contextlib.nullcontext():
                self.authenticate(method.__name__, context)
                return await method(self, request, context)
        except (ServiceError, ImageError) as exc:
            err = from_image_error(exc) if isinstance(exc, ImageError) else exc
            status = err.status
            log.info("refused", extra={"error": err.code, "detail": err.detail, "rpc": method.__name__})
            trailers = tuple((k.lower(), v) for k, v in err.headers.items() if k.lower() == "retry-after")
            await context.abort(STATUS.get(err.status, grpc.StatusCode.INTERNAL), err.detail, trailers)
        except grpc.aio.AbortError:
            raise
        except Exception:
            status = 500
            log.exception("unhandled error", extra={"rpc": method.__name__})
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        finally:
            if trace is not None:
                trace.finish(status, f"/{SERVICE}/{method.__name__}")
            request_id.reset(token)

    return wrapper


def _headers(context) -> dict[bytes, bytes]:
    """The call's metadata as the HTTP auth code reads headers."""
    return {k.encode(): v.encode("latin-1") for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _inputs(request: service_pb2.ModelInferRequest) -> dict[str, wire.InputTensor]:
    """The request's tensors in the transport-free form ``contract.images_of`` checks."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(request.inputs)} inputs: send one per input, or none")
    inputs = {}
    for i, item in enumerate(request.inputs):
        if item.name in inputs:
            raise BadRequest(f"input {item.name!r} is given twice")
        if any(d < 0 for d in item.shape):
            raise BadRequest(f"input {item.name!r}: shape {list(item.shape)} has a negative dimension")
        tensor = wire.InputTensor(item.name, item.datatype, list(item.shape))
        if raw:
            tensor.raw = raw[i]
        else:  # read lazily: a wrong datatype is refused before its contents are looked at
            tensor.data = list(getattr(item.contents, _CONTENTS[item.datatype])) if item.datatype in _CONTENTS else []
        inputs[item.name] = tensor
    return inputs


def _outputs_doc(request: service_pb2.ModelInferRequest) -> dict:
    """The requested outputs as ``contract.wanted_outputs`` reads them; all binary (raw contents)."""
    outputs = []
    for out in request.outputs:
        classification = "classification" in out.parameters and out.parameters["classification"].int64_param
        outputs.append({"name": out.name, "parameters": {"binary_data": True, "classification": classification}})
    return {"parameters": {"binary_data_output": True}, "outputs": outputs}


_RAW_OUTPUT_TAG = bytes([service_pb2.ModelInferResponse.DESCRIPTOR.fields_by_name["raw_output_contents"].number << 3 | 2])


def _varint(value: int) -> bytes:
    """protobuf's base-128 varint: 7 bits a byte, low bits first, high bit set on all but the last."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _response_bytes(head: service_pb2.ModelInferResponse, outputs: list[wire.OutputTensor]) -> bytes:
    """The serialized ModelInferResponse: ``head`` (names, id, output tensors) by protobuf, then each
    output's bytes framed as a ``raw_output_contents`` field (tag, length, bytes; protobuf's wire
    format is a sequence of fields, so appending them is the same message), in one join: one copy
    of a label map, off the loop, where protobuf makes three (into the message, its encoder, the
    bytes) wherever the message is built and grpc serializes it, on the loop."""
    for out in outputs:
        head.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
    parts = [head.SerializeToString()]
    for out in outputs:
        parts += (_RAW_OUTPUT_TAG, _varint(len(out.raw)), out.raw)
    return b"".join(parts)


class InferenceServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The protocol's calls on the app's runtime(s), resolved by ``service.oip.models``."""

    def __init__(self, app, settings: Settings):
        self.app = app
        keys = auth.KeyRing.from_settings(settings)  # the same keys as HTTP; rate buckets of its own
        self.auth = None if keys is None else auth.AuthMiddleware(None, keys, settings.auth_exempt_paths, settings.rate_limit_per_key)

    def trace(self, rpc: str, context):
        """``ModelInfer``'s server span (continuing the metadata's ``traceparent``) when tracing is
        on, as HTTP requests get theirs in ``service.middleware``; None otherwise."""
        tracing = getattr(self.app.state, "tracing", None)
        if tracing is None or rpc != "ModelInfer":
            return None
        scope = {"method": "POST", "path": f"/{SERVICE}/{rpc}", "headers": list(_headers(context).items())}
        return tracing.start_request(scope)

    def authenticate(self, rpc: str, context) -> None:
        """HTTP's API-key check on the call's metadata (``authorization: Bearer KEY`` or
        ``x-api-key``); a method path such as ``/inference.GRPCInferenceService/ServerLive`` in
        ``auth_exempt_paths`` passes without one."""
        if self.auth is None or auth.is_exempt(f"/{SERVICE}/{rpc}", self.auth.exempt):
            return
        self.auth.authenticate(_headers(context))

    def require_control(self, context) -> None:
        """The repository calls: model control on and, with auth on, an admin key (403 otherwise)."""
        presented = None if self.auth is None else auth.presented_key(_headers(context))
        key = None if presented is None else self.auth.keys.identify(presented)
        control.require_allowed(repository(self.app).settings, key is not None and key.admin)

    @_rpc
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @_rpc
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=server_ready(self.app))

    @_rpc
    async def ModelReady(self, request, context):
        try:
            ready = lookup(self.app, request.name, request.version).state == "ready"
        except NotReady:  # still loading: its name is not known yet
            ready = False
        return service_pb2.ModelReadyResponse(ready=ready)

    @_rpc
    async def ServerMetadata(self, request, context):
        return json_format.ParseDict(contract.server_metadata(package_version()), service_pb2.ServerMetadataResponse())

    @_rpc
    async def ModelMetadata(self, request, context):
        runtime = lookup(self.app, request.name, request.version)
        versions = repository(self.app).versions(request.name)
        doc = contract.model_metadata(request.name, versions, contract.platform(runtime.backend.name))
        return json_format.ParseDict(doc, service_pb2.ModelMetadataResponse())

    @_rpc
    async def ModelConfig(self, request, context):
        runtime = lookup(self.app, request.name, request.version)
        doc = contract.model_config(request.name, repository(self.app).versions(request.name), contract.platform(runtime.backend.name))
        config = json_format.ParseDict(doc, model_config_pb2.ModelConfig(), ignore_unknown_fields=True)  # no "label" field
        return service_pb2.ModelConfigResponse(config=config)

    @_rpc
    async def RepositoryIndex(self, request, context):
        self.require_control(context)
        rows = repository(self.app).index()
        response = service_pb2.RepositoryIndexResponse()
        for row in rows:
            if row["state"] == "READY" or not request.ready:
                response.models.add(name=row["name"], version=row.get("version", ""), state=row["state"], reason=row["reason"])
        return response

    @_rpc
    async def RepositoryModelLoad(self, request, context):
        self.require_control(context)
        parameters = {k: p.string_param for k, p in request.parameters.items() if p.WhichOneof("parameter_choice") == "string_param"}
        await repository(self.app).control("load", request.model_name, control.load_config(parameters))
        return service_pb2.RepositoryModelLoadResponse()

    @_rpc
    async def RepositoryModelUnload(self, request, context):
        self.require_control(context)
        await repository(self.app).control("unload", request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()

    @_rpc
    async def ModelInfer(self, request, context):
        runtime = lookup(self.app, request.model_name, request.model_version)
        async with runtime.admit():  # UNAVAILABLE / RESOURCE_EXHAUSTED first, counted for the drain
            images = contract.images_of(_inputs(request))
            wanted = contract.wanted_outputs(_outputs_doc(request))
            reservations = infer.reserve(runtime, images, wanted)
            try:
                outputs = await infer.outputs(runtime, images, wanted, reservations)
                head = service_pb2.ModelInferResponse(model_name=request.model_name, model_version=runtime.version, id=request.id)
                return await runtime.encode(_response_bytes, head, outputs)  # serialized off the loop: see infer_handler
            finally:  # the answer is serialized; grpc only sends it from here
                for reservation in reservations:
                    reservation.release()


def infer_handler(servicer: InferenceServicer) -> grpc.GenericRpcHandler:
    """``ModelInfer`` without a response serializer: its answer comes already serialized
    (``_response_bytes``, in the codec pool), so grpc sends those bytes as they are."""
    handler = grpc.unary_unary_rpc_method_handler(servicer.ModelInfer, request_deserializer=service_pb2.ModelInferRequest.FromString)
    return grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler})


async def start(app, settings: Settings) -> grpc.aio.Server:
    """Serve the protocol on ``settings.grpc_port`` (messages up to ``grpc_max_message_bytes`` both
    ways: grpc's 4 MiB default does not fit a batch of images). A port already taken is an error,
    as it is for HTTP, not a silently shared one (grpc's SO_REUSEPORT is turned off)."""
    limit = settings.grpc_max_message_bytes
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", limit),
        ("grpc.max_send_message_length", limit),
        ("grpc.so_reuseport", 1 if settings.workers > 1 else 0),  # workers share the port, like HTTP's
    ])  # fmt: skip
    servicer = InferenceServicer(app, settings)
    server.add_generic_rpc_handlers((infer_handler(servicer),))  # asked first: it takes ModelInfer
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen for gRPC on {host}:{settings.grpc_port}: {exc}") from None
    await server.start()
    log.info("grpc listening", extra={"host": settings.host, "grpc_port": settings.grpc_port})
    return server
