"""Tensors on the wire: the protocol's JSON form and its binary tensor data extension.

A request body is a JSON header, optionally followed by binary tensor data; the
``Inference-Header-Content-Length`` header gives the JSON part's length. Each input whose
parameters hold ``binary_data_size`` takes that many bytes of the binary part, in input order; a
BYTES tensor's elements there are each a 4-byte little-endian length and the bytes. Responses are
framed the same way. Nothing here knows the model: ``contract`` says which tensors it takes.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from service.errors import BadRequest

HEADER_LENGTH = "Inference-Header-Content-Length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
_LENGTH = struct.Struct("<I")


@dataclass
class InputTensor:
    """One input as sent: its JSON ``data`` or its slice of the binary part (``raw``)."""

    name: str
    datatype: str
    shape: list[int]
    data: list | None = None
    raw: bytes | memoryview | None = None

    @property
    def count(self) -> int:
        return math.prod(self.shape)

    def bytes_elements(self) -> list[bytes | str]:
        """A BYTES tensor's elements: bytes from the binary part, strings from JSON."""
        elements = unpack_bytes(self.raw) if self.raw is not None else _flat(self.data)
        if len(elements) != self.count:
            raise BadRequest(f"input {self.name!r} has {len(elements)} elements; its shape {self.shape} needs {self.count}")
        return elements

    def uint8_array(self) -> np.ndarray:
        """A UINT8 tensor as an array of its shape (read-only view of the binary part)."""
        if self.raw is not None:
            if len(self.raw) != self.count:
                raise BadRequest(f"input {self.name!r} has {len(self.raw)} bytes; UINT8 shape {self.shape} needs {self.count}")
            return np.frombuffer(self.raw, np.uint8).reshape(self.shape)
        values = _flat(self.data)
        if len(values) != self.count or not all(type(v) is int and 0 <= v <= 255 for v in values):
            raise BadRequest(f"input {self.name!r}: data must be {self.count} integers 0-255 for UINT8 shape {self.shape}")
        return np.asarray(values, np.uint8).reshape(self.shape)


@dataclass
class OutputTensor:
    """One output to send: ``raw`` goes to the binary part when ``binary``, else into JSON."""

    name: str
    datatype: str
    shape: list[int]
    raw: bytes
    binary: bool
    json_data: bytes | None = None  # the JSON text of ``data`` when not binary
    parameters: dict = field(default_factory=dict)


def _flat(data) -> list:
    """The protocol allows ``data`` flat or nested row-major: always flat here."""
    if not isinstance(data, list):
        raise BadRequest("tensor data must be a JSON array")
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def unpack_bytes(raw: bytes | memoryview) -> list[bytes]:
    """BYTES elements from the binary extension: each a 4-byte little-endian length + the bytes."""
    raw, out, at = memoryview(raw), [], 0
    while at < len(raw):
        if at + 4 > len(raw):
            raise BadRequest("BYTES tensor data ends inside an element's 4-byte length")
        (size,) = _LENGTH.unpack_from(raw, at)
        if at + 4 + size > len(raw):
            raise BadRequest(f"BYTES element of {size} bytes runs past the end of its tensor data")
        out.append(bytes(raw[at + 4 : at + 4 + size]))
        at += 4 + size
    return out


def pack_bytes(elements: list[bytes]) -> bytes:
    return b"".join(_LENGTH.pack(len(e)) + e for e in elements)


def _shape(value, name: str) -> list[int]:
    if not isinstance(value, list) or not all(type(d) is int and d >= 0 for d in value):
        raise BadRequest(f"input {name!r}: shape must be a list of non-negative integers")
    return value


def parse_request(body: bytes, header_length: str | None) -> tuple[dict, dict[str, InputTensor]]:
    """The request's JSON header and its inputs by name, binary slices attached."""
    if header_length is None:
        head, binary = body, memoryview(b"")
    else:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise BadRequest(f"{HEADER_LENGTH} is {header_length!r}; the body has {len(body)} bytes")
        head, binary = body[: int(header_length)], memoryview(body)[int(header_length) :]
    try:
        doc = json.loads(head)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"inference request header is not JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list) or not doc["inputs"]:
        raise BadRequest("inference request needs a non-empty 'inputs' list")
    inputs, at = {}, 0
    for item in doc["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or not isinstance(item.get("datatype"), str):
            raise BadRequest("each input needs a 'name', a 'datatype' and a 'shape'")
        name, params = item["name"], item.get("parameters") or {}
        if name in inputs:
            raise BadRequest(f"input {name!r} is given twice")
        tensor = InputTensor(name, item["datatype"], _shape(item.get("shape"), name))
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            if type(size) is not int or size < 0 or at + size > len(binary):
                raise BadRequest(f"input {name!r}: binary_data_size {size!r} does not fit the {len(binary)} bytes of binary data")
            tensor.raw, at = binary[at : at + size], at + size
        elif "data" in item:
            tensor.data = item["data"]
        else:
            raise BadRequest(f"input {name!r} has neither 'data' nor binary_data_size")
        inputs[name] = tensor
    if at != len(binary):
        raise BadRequest(f"{len(binary) - at} bytes of binary data belong to no input")
    return doc, inputs


def encode_response(doc: dict, outputs: list[OutputTensor]) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON alone, or JSON + binary part when an output is
    binary. JSON outputs' data is spliced in as prepared text (``json_data``), so a large label map
    never becomes a list of Python ints. ``doc`` holds the fields before ``outputs`` (never empty)."""
    entries = []
    for out in outputs:
        entry = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        params = {**out.parameters, **({"binary_data_size": len(out.raw)} if out.binary else {})}
        if params:
            entry["parameters"] = params
        text = json.dumps(entry).encode()
        entries.append(text if out.binary else text[:-1] + b', "data": ' + out.json_data + b"}")
    head = json.dumps(doc).encode()[:-1] + b', "outputs": [' + b", ".join(entries) + b"]}"
    binary = [out.raw for out in outputs if out.binary]
    if not binary:
        return head, {"content-type": JSON_TYPE}
    return b"".join([head, *binary]), {"content-type": BINARY_TYPE, HEADER_LENGTH: str(len(head))}
