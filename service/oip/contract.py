"""This service's tensor contract, and the documents that publish it.

Inputs (one of them per request): ``IMAGE``, BYTES [N], each element an encoded image file
(decoded by the same decoder, limits and memory budget as /segment; in JSON, base64 text, since
JSON strings cannot carry binary); ``PIXELS``, UINT8 [N, H, W, 3], RGB. Outputs: ``LABELS``, UINT8
[N, H, W], class indices at the input's size (every image of the request must then have one
size); ``LABELS_PNG``, BYTES [N], a palette PNG per image (in JSON, base64 text). No outputs
requested = ``LABELS``. The model configuration reports ``max_batch_size: 0`` with the batch as
dim -1: a client that batched by itself would send shapes with a leading batch dim we would refuse.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

import numpy as np

from service.errors import BadRequest
from service.oip.wire import InputTensor, OutputTensor, pack_bytes

IMAGE, PIXELS, LABELS, LABELS_PNG = "IMAGE", "PIXELS", "LABELS", "LABELS_PNG"
EXTENSIONS = ["binary_tensor_data", "model_configuration", "model_repository"]

INPUTS = {
    IMAGE: ("BYTES", [-1], "encoded image files (JPEG/PNG/WebP/BMP/TIFF); base64 text in JSON"),
    PIXELS: ("UINT8", [-1, -1, -1, 3], "RGB images of one size, N x H x W x 3"),
}
OUTPUTS = {
    LABELS: ("UINT8", [-1, -1, -1], "class index per pixel at the input size, N x H x W"),
    LABELS_PNG: ("BYTES", [-1], "palette PNG per image (pixel = class index); base64 text in JSON"),
}
_CONFIG_TYPE = {"BYTES": "TYPE_STRING", "UINT8": "TYPE_UINT8"}
_PLATFORM = {"torch": "pytorch"}


def platform(backend_name: str) -> str:
    """e.g. ``pytorch_deeplabv3plus``: the runtime and the architecture, as Triton's platforms say."""
    return f"{_PLATFORM.get(backend_name, backend_name)}_deeplabv3plus"


def server_metadata(version: str) -> dict:
    return {"name": "deeplab-serve", "version": version, "extensions": EXTENSIONS}


def model_metadata(name: str, versions: list[str], platform_name: str) -> dict:
    def tensors(spec):
        return [{"name": n, "datatype": t, "shape": s} for n, (t, s, _) in spec.items()]

    return {"name": name, "versions": versions, "platform": platform_name, "inputs": tensors(INPUTS), "outputs": tensors(OUTPUTS)}


def model_config(name: str, versions: list[str], platform_name: str) -> dict:
    """Triton's model-configuration extension. Both inputs are optional (a request sends one)."""

    def tensors(spec, optional):
        return [
            {"name": n, "data_type": _CONFIG_TYPE[t], "dims": s, **({"optional": True} if optional else {}), "label": doc}
            for n, (t, s, doc) in spec.items()
        ]

    return {
        "name": name,
        "platform": platform_name,
        "max_batch_size": 0,
        "input": tensors(INPUTS, True),
        "output": tensors(OUTPUTS, False),
        "version_policy": {"latest": {"num_versions": len(versions)}},
    }


@dataclass(frozen=True)
class Images:
    """A request's images: encoded files (``IMAGE``) or one RGB array (``PIXELS``)."""

    encoded: list[bytes] | None = None
    pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.encoded) if self.encoded is not None else len(self.pixels)


def _base64(text, index: int) -> bytes:
    if not isinstance(text, str):
        raise BadRequest(f"IMAGE[{index}]: in JSON an element is base64 text")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"IMAGE[{index}]: not valid base64 (in JSON, IMAGE elements are base64 text)") from None


def images_of(inputs: dict[str, InputTensor]) -> Images:
    """Check names, datatypes and shapes against the contract (400 naming what is wrong)."""
    unknown = sorted(set(inputs) - set(INPUTS))
    if unknown or len(inputs) != 1:
        raise BadRequest(f"send exactly one input, {IMAGE} or {PIXELS}; got {sorted(inputs)}")
    (tensor,) = inputs.values()
    datatype, shape, _ = INPUTS[tensor.name]
    if tensor.datatype != datatype:
        raise BadRequest(f"input {tensor.name!r} has datatype {tensor.datatype}; the model takes {datatype}")
    if len(tensor.shape) != len(shape) or (shape[-1] != -1 and tensor.shape[-1] != shape[-1]):
        raise BadRequest(f"input {tensor.name!r} has shape {tensor.shape}; the model takes {shape} (-1: any size)")
    if tensor.shape[0] == 0:
        raise BadRequest(f"input {tensor.name!r} holds no image")
    if tensor.name == PIXELS:
        return Images(pixels=tensor.uint8_array())
    elements = tensor.bytes_elements()
    return Images(encoded=[e if isinstance(e, bytes) else _base64(e, i) for i, e in enumerate(elements)])


@dataclass(frozen=True)
class Wanted:
    name: str
    binary: bool


def wanted_outputs(doc: dict) -> list[Wanted]:
    """The requested outputs and whether each goes to the binary part (``binary_data`` per output,
    else the request's ``binary_data_output``); unknown request parameters are ignored."""
    params = doc.get("parameters") if isinstance(doc.get("parameters"), dict) else {}
    default_binary = params.get("binary_data_output") is True
    requested = doc.get("outputs") or [{"name": LABELS}]
    if not isinstance(requested, list):
        raise BadRequest("'outputs' must be a list")
    wanted = []
    for item in requested:
        if not isinstance(item, dict) or item.get("name") not in OUTPUTS:
            name = item.get("name") if isinstance(item, dict) else item
            raise BadRequest(f"unknown output {name!r}; the model gives {sorted(OUTPUTS)}")
        out_params = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
        if out_params.get("classification"):
            raise BadRequest("the classification extension is not supported: request LABELS or LABELS_PNG")
        if any(w.name == item["name"] for w in wanted):
            raise BadRequest(f"output {item['name']!r} is requested twice")
        wanted.append(Wanted(item["name"], out_params.get("binary_data", default_binary) is True))
    return wanted


def check_one_size(wanted: list[Wanted], labels: list[np.ndarray]) -> None:
    """LABELS is one N x H x W tensor: images of several sizes cannot share it."""
    sizes = [f"{lab.shape[1]}x{lab.shape[0]}" for lab in labels]
    if any(w.name == LABELS for w in wanted) and len(set(sizes)) > 1:
        listed = ", ".join(f"[{i}] {s}" for i, s in enumerate(sizes))
        raise BadRequest(f"LABELS needs images of one size; these are {listed} (width x height): request LABELS_PNG, or one size per request")


def labels_json(labels: list[np.ndarray]) -> bytes:
    """The JSON array text of the label maps, flattened: each value right-aligned in four bytes
    ("  7,"), built by numpy rather than by a Python int per pixel."""
    flat = np.concatenate([lab.reshape(-1) for lab in labels])
    text = np.full((flat.size, 4), ord(" "), np.uint8)
    text[:, 3] = ord(",")
    text[:, 2] = flat % 10 + 48
    text[:, 1] = np.where(flat >= 10, flat // 10 % 10 + 48, 32)
    text[:, 0] = np.where(flat >= 100, flat // 100 + 48, 32)
    return b"[" + text.tobytes()[:-1] + b"]"


def output_tensors(wanted: list[Wanted], labels: list[np.ndarray], pngs: list[bytes] | None) -> list[OutputTensor]:
    """The outputs in the order requested (``pngs`` given when LABELS_PNG is wanted)."""
    out = []
    for w in wanted:
        if w.name == LABELS:
            shape = [len(labels), *labels[0].shape]
            raw = b"".join(memoryview(np.ascontiguousarray(lab)).cast("B") for lab in labels) if w.binary else b""
            out.append(OutputTensor(LABELS, "UINT8", shape, raw, w.binary, None if w.binary else labels_json(labels)))
        else:
            text = None if w.binary else json.dumps([base64.b64encode(p).decode() for p in pngs]).encode()
            out.append(OutputTensor(LABELS_PNG, "BYTES", [len(pngs)], pack_bytes(pngs) if w.binary else b"", w.binary, text))
    return out
