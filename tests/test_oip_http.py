"""The Open Inference Protocol over HTTP (issue 16), driven by Triton's own ``tritonclient.http``
against a real server on 127.0.0.1, plus raw httpx requests for the binary extension's framing.

Labels are compared with /segment?format=raw for the same image bytes: the protocol is another
door to the same pipeline, so its answers must be byte-identical.
"""

from __future__ import annotations

import base64
import copy
import io
import json
import struct
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from helpers import SlowBackend, free_port, image_bytes, post, raw_labels, running_server, scene, small_net, wait_ready_in_thread
from PIL import Image
from tritonclient.utils import InferenceServerException

from model import DEFAULT_MODEL, get_config
from service.backends.pytorch import TorchBackend
from service.server import build_server
from service.settings import Settings

MODEL = get_config(DEFAULT_MODEL).name
SIZE = (80, 60)  # width, height: resized into the 64x48 test scale, labels restored to this size


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=copy.deepcopy(small_net())), max_batch_size=8, max_queue_delay_ms=20) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    with triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60.0) as c:
        yield c


def jpeg(seed: int, size=SIZE) -> bytes:
    return image_bytes(scene(seed, size), "JPEG", quality=90)


def image_input(*files: bytes, binary=True) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(files)], "BYTES")
    elements = files if binary else [base64.b64encode(f) for f in files]  # JSON carries base64 text
    tensor.set_data_from_numpy(np.array(elements, dtype=np.object_), binary_data=binary)
    return tensor


def png_labels(data: bytes | str) -> np.ndarray:
    img = Image.open(io.BytesIO(data if isinstance(data, bytes) else base64.b64decode(data)))
    assert img.mode == "P"
    return np.asarray(img)


def refused(call, status: str) -> str:
    """Run ``call``; it must raise tritonclient's error with ``status``. Returns the message."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == status, raised.value
    return raised.value.message()


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    meta = client.get_server_metadata()
    assert meta["name"] == "deeplab-serve"
    assert {"binary_tensor_data", "model_configuration"} <= set(meta["extensions"])


def test_model_metadata_lists_the_tensor_contract(client):
    for meta in (client.get_model_metadata(MODEL), client.get_model_metadata(MODEL, "1")):
        assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "pytorch_deeplabv3plus"
        assert meta["inputs"] == [
            {"name": "IMAGE", "datatype": "BYTES", "shape": [-1]},
            {"name": "PIXELS", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
        ]
        assert meta["outputs"] == [
            {"name": "LABELS", "datatype": "UINT8", "shape": [-1, -1, -1]},
            {"name": "LABELS_PNG", "datatype": "BYTES", "shape": [-1]},
        ]


def test_model_config_reports_no_batching_of_its_own(client):
    config = client.get_model_config(MODEL)
    assert config["max_batch_size"] == 0
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("IMAGE", "TYPE_STRING", [-1]), ("PIXELS", "TYPE_UINT8", [-1, -1, -1, 3]),
    ]  # fmt: skip
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("LABELS", "TYPE_UINT8", [-1, -1, -1]), ("LABELS_PNG", "TYPE_STRING", [-1]),
    ]  # fmt: skip


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary outputs", "JSON outputs"])
@pytest.mark.parametrize("binary_in", [True, False], ids=["binary inputs", "JSON inputs"])
def test_two_jpegs_give_the_labels_of_segment(server, client, binary_in, binary_out):
    files = [jpeg(1), jpeg(2)]
    want = np.stack([raw_labels(server, f) for f in files])
    assert len(np.unique(want)) > 1 and not np.array_equal(want[0], want[1])  # the comparison means something
    result = client.infer(
        MODEL, [image_input(*files, binary=binary_in)], outputs=[triton.InferRequestedOutput("LABELS", binary_data=binary_out)],
        request_id="two-jpegs", parameters={"triton_enable_empty_final_response": True},  # unknown: ignored
    )  # fmt: skip
    got = result.as_numpy("LABELS")
    assert got.dtype == np.uint8 and got.shape == (2, SIZE[1], SIZE[0])
    assert np.array_equal(got, want)
    response = result.get_response()
    assert response["model_name"] == MODEL and response["model_version"] == "1" and response["id"] == "two-jpegs"
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) == binary_out


def test_no_outputs_requested_means_labels_in_binary(server, client):
    """tritonclient then asks for binary_data_output: LABELS comes back in the binary part."""
    result = client.infer(MODEL, [image_input(jpeg(3))])
    (output,) = result.get_response()["outputs"]
    assert output["name"] == "LABELS" and output["parameters"]["binary_data_size"] == SIZE[0] * SIZE[1]
    assert np.array_equal(result.as_numpy("LABELS")[0], raw_labels(server, jpeg(3)))


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary", "JSON"])
def test_labels_png_of_images_of_different_sizes(server, client, binary_out):
    files = [jpeg(4), jpeg(5, (40, 30)), jpeg(6, (50, 90))]
    result = client.infer(MODEL, [image_input(*files)], outputs=[triton.InferRequestedOutput("LABELS_PNG", binary_data=binary_out)])
    pngs = result.as_numpy("LABELS_PNG")
    assert pngs.shape == (3,)
    for data, file in zip(pngs, files):
        assert np.array_equal(png_labels(data), raw_labels(server, file))


def test_labels_and_png_together_in_one_answer(server, client):
    files = [jpeg(7), jpeg(8)]
    outputs = [triton.InferRequestedOutput("LABELS_PNG"), triton.InferRequestedOutput("LABELS", binary_data=False)]
    result = client.infer(MODEL, [image_input(*files)], outputs=outputs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["LABELS_PNG", "LABELS"]
    labels = result.as_numpy("LABELS")
    for i, file in enumerate(files):
        assert np.array_equal(labels[i], raw_labels(server, file))
        assert np.array_equal(png_labels(result.as_numpy("LABELS_PNG")[i]), labels[i])


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary", "JSON"])
def test_pixels_input(server, client, binary_in):
    rgbs = np.stack([scene(9, SIZE), scene(10, SIZE)])
    tensor = triton.InferInput("PIXELS", list(rgbs.shape), "UINT8")
    tensor.set_data_from_numpy(rgbs, binary_data=binary_in)
    got = client.infer(MODEL, [tensor]).as_numpy("LABELS")
    want = np.stack([raw_labels(server, image_bytes(rgb), "image/png") for rgb in rgbs])  # PNG: the same pixels
    assert np.array_equal(got, want)


def test_images_of_different_sizes_cannot_share_labels(client):
    message = refused(lambda: client.infer(MODEL, [image_input(jpeg(1), jpeg(2, (40, 30)))]), "400")
    assert "80x60" in message and "40x30" in message and "LABELS_PNG" in message


def test_unknown_model_or_version_is_404(client):
    assert "nope" in refused(lambda: client.get_model_metadata("nope"), "404")
    refused(lambda: client.get_model_metadata(MODEL, "2"), "404")
    refused(lambda: client.get_model_config("nope"), "404")
    assert not client.is_model_ready("nope")
    assert MODEL in refused(lambda: client.infer("nope", [image_input(jpeg(1))]), "404")


def pixels(shape, datatype, dtype=np.uint8) -> triton.InferInput:
    tensor = triton.InferInput("PIXELS", list(shape), datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype))
    return tensor


@pytest.mark.parametrize(
    "tensor, words",
    [
        (lambda: pixels((1, 48, 64, 3), "FP32", np.float32), ["FP32", "UINT8"]),
        (lambda: pixels((1, 48, 64), "UINT8"), ["shape", "[1, 48, 64]"]),
        (lambda: pixels((1, 48, 64, 4), "UINT8"), ["shape", "[1, 48, 64, 4]"]),
        (lambda: pixels((48, 64, 3), "UINT8"), ["shape"]),
        (lambda: pixels((0, 48, 64, 3), "UINT8"), ["no image"]),
        (lambda: pixels((1, 0, 64, 3), "UINT8"), ["64x0", "no pixels"]),
    ],
    ids=["dtype", "no channels", "four channels", "no batch dim", "empty", "zero height"],
)
def test_wrong_dtype_or_shape_is_400(client, tensor, words):
    message = refused(lambda: client.infer(MODEL, [tensor()]), "400")
    assert all(w in message for w in words), message


def test_a_bad_image_is_named_by_its_place(client):
    message = refused(lambda: client.infer(MODEL, [image_input(jpeg(1), b"not an image")]), "415")
    assert message.startswith("IMAGE[1]:"), message
    corrupt = jpeg(2)[:200]  # a JPEG cut short: its header reads, its data does not
    assert refused(lambda: client.infer(MODEL, [image_input(corrupt)]), "400").startswith("IMAGE[0]:")
    other = triton.InferInput("TEXT", [1], "BYTES")
    other.set_data_from_numpy(np.array([b"x"], dtype=np.object_))
    assert "IMAGE or PIXELS" in refused(lambda: client.infer(MODEL, [other]), "400")
    unknown_output = [triton.InferRequestedOutput("LOGITS")]
    assert "LOGITS" in refused(lambda: client.infer(MODEL, [image_input(jpeg(1))], outputs=unknown_output), "400")


def test_binary_extension_framing_without_tritonclient(server):
    """The byte layout by hand: a BYTES input length-prefixed after the JSON header, and an answer of
    JSON header (its length in Inference-Header-Content-Length) + LABELS bytes + LABELS_PNG as
    length-prefixed elements, in the order the outputs were requested."""
    file = jpeg(11)
    element = struct.pack("<I", len(file)) + file
    head = json.dumps({
        "id": "raw-1",
        "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(element)}}],
        "outputs": [{"name": "LABELS", "parameters": {"binary_data": True}}, {"name": "LABELS_PNG", "parameters": {"binary_data": True}}],
    }).encode()  # fmt: skip
    r = httpx.post(
        f"{server}/v2/models/{MODEL}/versions/1/infer", content=head + element,
        headers={"Inference-Header-Content-Length": str(len(head)), "content-type": "application/octet-stream"}, timeout=60,
    )  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    length = int(r.headers["inference-header-content-length"])
    doc = json.loads(r.content[:length])
    assert doc["id"] == "raw-1" and doc["model_name"] == MODEL
    (labels_out, png_out) = doc["outputs"]
    assert labels_out["shape"] == [1, SIZE[1], SIZE[0]] and labels_out["datatype"] == "UINT8"
    n_labels, n_png = labels_out["parameters"]["binary_data_size"], png_out["parameters"]["binary_data_size"]
    assert n_labels == SIZE[0] * SIZE[1] and length + n_labels + n_png == len(r.content)
    labels = np.frombuffer(r.content[length : length + n_labels], np.uint8).reshape(SIZE[1], SIZE[0])
    assert np.array_equal(labels, raw_labels(server, file))
    png_part = r.content[length + n_labels :]
    (png_size,) = struct.unpack("<I", png_part[:4])
    assert png_size == len(png_part) - 4 and np.array_equal(png_labels(png_part[4:]), labels)

    plain = httpx.post(f"{server}/v2/models/{MODEL}/infer", json={"inputs": [
        {"name": "PIXELS", "datatype": "UINT8", "shape": [1, 2, 2, 3], "data": [[[[0, 0, 0], [9, 9, 9]], [[200, 0, 0], [0, 255, 0]]]]},
    ]}, timeout=60)  # nested data, no binary part: a plain JSON answer  # fmt: skip
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in plain.headers
    assert plain.json()["outputs"][0]["shape"] == [1, 2, 2] and len(plain.json()["outputs"][0]["data"]) == 4


@pytest.mark.parametrize(
    "path, body, headers, status",
    [
        (f"/v2/models/{MODEL}/infer", b"{", {}, 400),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": []}', {}, 400),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": 9}}]}', {}, 400),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', {}, 400),
        (f"/v2/models/{MODEL}/infer", b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": ["eA=="]}]}', {"Inference-Header-Content-Length": "x"}, 400),
        (f"/v2/models/{MODEL}/infer", b'{}', {"content-encoding": "gzip"}, 415),
        ("/v2/models/nope/infer", b'{}', {}, 404),
        ("/v2/no/such/path", None, {}, 404),
    ],
)
def test_errors_take_the_protocols_form(server, path, body, headers, status):
    """``{"error": message}`` only, on /v2 (not the service's ``{"error", "detail"}`` of /segment)."""
    r = httpx.post(server + path, content=body, headers=headers) if body is not None else httpx.get(server + path)
    assert r.status_code == status, r.text
    assert list(r.json()) == ["error"] and r.json()["error"], r.json()
    assert httpx.get(server + "/v1/nope").json()["error"] == "not_found"  # the rest keeps its own form


def infer_over_httpx(url: str, files: list[bytes]) -> np.ndarray:
    """tritonclient's own request framing and response parsing, sent with httpx (tritonclient's
    gevent connection pool is not for threads)."""
    body, length = triton.InferenceServerClient.generate_request_body([image_input(*files)])
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers={"Inference-Header-Content-Length": str(length)}, timeout=60)
    assert r.status_code == 200, r.text
    return triton.InferenceServerClient.parse_response_body(r.content, header_length=int(r.headers["inference-header-content-length"])).as_numpy("LABELS")


def test_a_requests_images_share_one_batch_with_another_request(server):
    """The three images of one request and a /segment request are computed as one batch of four:
    the protocol's images go through the same dynamic batcher, concurrently. (The reference labels
    come from ``server``, same weights: here a lone image would wait out the long queue delay.)"""
    backend = SlowBackend(net=small_net())
    files = [jpeg(12), jpeg(13), jpeg(14)]
    with running_server(backend, max_batch_size=4, max_queue_delay_ms=10_000, queue_capacity=4) as url:
        with ThreadPoolExecutor(2) as pool, backend.holding():
            single = pool.submit(post, url, jpeg(15), "raw", "image/jpeg")
            triple = pool.submit(infer_over_httpx, url, files)
            backend.wait_until(lambda b: b.images_held == 4, "one batch holds all four images")
            assert backend.batches_started == 1
        assert single.result().status_code == 200
        assert np.array_equal(triple.result(), np.stack([raw_labels(server, f) for f in files]))
        message = refused_status(url, [jpeg(1)] * 5, 413)  # more than the queue can ever hold
        assert "5 images" in message


def refused_status(url: str, files: list[bytes], status: int) -> str:
    body, length = triton.InferenceServerClient.generate_request_body([image_input(*files)])
    r = httpx.post(f"{url}/v2/models/{MODEL}/infer", content=body, headers={"Inference-Header-Content-Length": str(length)}, timeout=60)
    assert r.status_code == status, r.text
    return r.json()["error"]


def test_a_draining_server_is_not_ready_in_the_protocols_form():
    """After SIGTERM's first step (``begin_drain``): ready probes and inference get 503 + Retry-After
    with ``{"error": ...}``, liveness stays 200."""
    settings = Settings(host="127.0.0.1", port=free_port(), device="cpu", log_level="warning")
    server = build_server(settings, TorchBackend(net=small_net()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    try:
        wait_ready_in_thread(thread, url, "/v2/health/ready")
        server.repository.begin_drain()
        assert httpx.get(url + "/v2/health/live").status_code == 200
        for r in (
            httpx.get(url + "/v2/health/ready"),
            httpx.get(f"{url}/v2/models/{MODEL}/ready"),
            httpx.post(f"{url}/v2/models/{MODEL}/infer", json={"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 1, 1, 3], "data": [0, 0, 0]}]}),
        ):
            assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
            assert list(r.json()) == ["error"]
    finally:
        server.should_exit = True
        thread.join(30)
