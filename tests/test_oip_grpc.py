"""The Open Inference Protocol over gRPC (issue 16), driven by Triton's own ``tritonclient.grpc``
against a real server on 127.0.0.1 whose gRPC port is on.

Labels are compared with /segment?format=raw and with the HTTP /v2 answer for the same bytes: gRPC
is a third door to the same pipeline, so its answers must be identical.
"""

from __future__ import annotations

import copy
import hashlib
import io
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from helpers import free_port, image_bytes, raw_labels, running_server, scene, small_net
from PIL import Image
from tritonclient.utils import InferenceServerException

from model import DEFAULT_MODEL, get_config
from service.backends.pytorch import TorchBackend
from service.oip import grpc as oip_grpc
from service.oip import wire
from service.server import build_server
from service.settings import Settings

MODEL = get_config(DEFAULT_MODEL).name
SIZE = (80, 60)  # width, height: resized into the 64x48 test scale, labels restored to this size
GRPC_DEFAULT_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def ports():
    grpc_port = free_port()
    with running_server(TorchBackend(net=copy.deepcopy(small_net())), grpc_port=grpc_port, max_batch_size=8, max_queue_delay_ms=20) as url:
        yield url, grpc_port


@pytest.fixture(scope="module")
def server(ports):
    return ports[0]


@pytest.fixture(scope="module")
def client(ports):
    with triton.InferenceServerClient(f"127.0.0.1:{ports[1]}") as c:
        yield c


def jpeg(seed: int, size=SIZE) -> bytes:
    return image_bytes(scene(seed, size), "JPEG", quality=90)


def image_input(*files: bytes) -> triton.InferInput:
    tensor = triton.InferInput("IMAGE", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_))  # raw_input_contents, length-prefixed
    return tensor


def pixels_input(rgb: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("PIXELS", list(rgb.shape), "UINT8")
    tensor.set_data_from_numpy(rgb)
    return tensor


def refused(call, status: str) -> str:
    """Run ``call``; it must raise tritonclient's error with gRPC ``status``. Returns the message."""
    with pytest.raises(InferenceServerException) as raised:
        call()
    assert raised.value.status() == f"StatusCode.{status}", raised.value
    return raised.value.message()


def test_server_live_ready_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
    assert "no version '7'" in refused(lambda: client.is_model_ready(MODEL, "7"), "NOT_FOUND")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "deeplab-serve" and "model_configuration" in meta["extensions"]


def test_model_metadata_lists_the_tensor_contract(client):
    meta = client.get_model_metadata(MODEL, as_json=True)
    assert meta["name"] == MODEL and meta["versions"] == ["1"] and meta["platform"] == "pytorch_deeplabv3plus"
    tensors = {t["name"]: (t["datatype"], [int(d) for d in t["shape"]]) for t in meta["inputs"] + meta["outputs"]}
    assert tensors == {
        "IMAGE": ("BYTES", [-1]),
        "PIXELS": ("UINT8", [-1, -1, -1, 3]),
        "LABELS": ("UINT8", [-1, -1, -1]),
        "LABELS_PNG": ("BYTES", [-1]),
    }


def test_model_config_reports_no_batching_of_its_own(client):
    config = client.get_model_config(MODEL).config
    assert config.name == MODEL and config.max_batch_size == 0
    inputs = {i.name: (i.data_type, list(i.dims), i.optional) for i in config.input}
    assert inputs["IMAGE"] == (triton.model_config_pb2.TYPE_STRING, [-1], True)
    assert inputs["PIXELS"] == (triton.model_config_pb2.TYPE_UINT8, [-1, -1, -1, 3], True)
    assert config.version_policy.latest.num_versions == 1


def test_two_jpegs_give_the_labels_of_segment_and_of_http_v2(server, client):
    files = [jpeg(1), jpeg(2)]
    result = client.infer(MODEL, [image_input(*files)], request_id="r-7", parameters={"triton_enable_empty_final_response": True})
    labels = result.as_numpy("LABELS")  # no outputs requested: LABELS; the unknown parameter ignored
    assert labels.dtype == np.uint8 and labels.shape == (2, SIZE[1], SIZE[0])
    assert result.get_response().id == "r-7" and result.get_response().model_version == "1"
    for got, data in zip(labels, files):
        np.testing.assert_array_equal(got, raw_labels(server, data))
    with triton_http.InferenceServerClient(server.removeprefix("http://"), network_timeout=60.0) as http:
        over_http = http.infer(MODEL, [triton_http.InferInput("IMAGE", [2], "BYTES").set_data_from_numpy(np.array(files, dtype=np.object_))])
    np.testing.assert_array_equal(labels, over_http.as_numpy("LABELS"))
    assert len(set(hashlib.sha256(lab.tobytes()).hexdigest() for lab in labels)) == 2, "two images, two answers"


def test_labels_png_of_images_of_different_sizes(server, client):
    files = [jpeg(3, (80, 60)), jpeg(4, (50, 70))]
    result = client.infer(MODEL, [image_input(*files)], outputs=[triton.InferRequestedOutput("LABELS_PNG")])
    assert result.as_numpy("LABELS") is None
    pngs = result.as_numpy("LABELS_PNG")
    assert pngs.shape == (2,)
    for png, data in zip(pngs, files):
        img = Image.open(io.BytesIO(png))
        assert img.mode == "P"
        np.testing.assert_array_equal(np.asarray(img), raw_labels(server, data))


def test_labels_of_images_of_different_sizes_are_refused_by_name(client):
    message = refused(lambda: client.infer(MODEL, [image_input(jpeg(3, (80, 60)), jpeg(4, (50, 70)))]), "INVALID_ARGUMENT")
    assert "[0] 80x60, [1] 50x70" in message


def test_pixels_input(server, client):
    rgb = np.stack([scene(5), scene(6)])  # 48 x 64 each
    result = client.infer(MODEL, [pixels_input(rgb)], outputs=[triton.InferRequestedOutput("LABELS"), triton.InferRequestedOutput("LABELS_PNG")])
    labels = result.as_numpy("LABELS")
    for got, png, image in zip(labels, result.as_numpy("LABELS_PNG"), rgb):
        np.testing.assert_array_equal(got, raw_labels(server, image_bytes(image, "PNG"), "image/png"))  # PNG: lossless
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), got)


def test_image_elements_in_contents_rather_than_raw(server, ports):
    """``contents.bytes_contents`` (what a client that does not use raw contents sends)."""
    request = triton.service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(jpeg(8))
    with grpc.insecure_channel(f"127.0.0.1:{ports[1]}") as channel:
        response = triton.service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)
    (labels,) = response.raw_output_contents
    assert response.outputs[0].name == "LABELS" and list(response.outputs[0].shape) == [1, SIZE[1], SIZE[0]]
    np.testing.assert_array_equal(np.frombuffer(labels, np.uint8).reshape(SIZE[1], SIZE[0]), raw_labels(server, jpeg(8)))


def test_the_answer_serialized_off_the_loop_is_protobufs_own_serialization():
    """ModelInfer's answer is framed by hand (``_response_bytes``, so a label map is copied once);
    the bytes must be those protobuf itself writes for the same message, for contents whose length
    prefixes take one to four bytes, and an empty one."""
    contents = [np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes() for n in (2**21 + 5, 300, 0, 127)]
    outputs = [wire.OutputTensor(f"T{i}", "UINT8", [len(c)], c, True) for i, c in enumerate(contents)]
    fields = {"model_name": MODEL, "model_version": "1", "id": "r-9"}
    expected = triton.service_pb2.ModelInferResponse(**fields, raw_output_contents=contents)
    for out in outputs:
        expected.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
    framed = oip_grpc._response_bytes(triton.service_pb2.ModelInferResponse(**fields), outputs)
    assert framed == expected.SerializeToString()
    assert triton.service_pb2.ModelInferResponse.FromString(framed) == expected


def test_unknown_model_or_version_is_not_found(client):
    assert "unknown model 'nope'" in refused(lambda: client.get_model_metadata("nope"), "NOT_FOUND")
    assert "no version '2'" in refused(lambda: client.infer(MODEL, [image_input(jpeg(1))], model_version="2"), "NOT_FOUND")
    refused(lambda: client.infer("nope", [image_input(jpeg(1))]), "NOT_FOUND")


@pytest.mark.parametrize(
    "tensor, words",
    [
        (lambda: pixels_input(np.zeros((1, 4, 4), np.uint8)), "shape [1, 4, 4]"),
        (lambda: pixels_input(np.zeros((1, 4, 4, 3), np.uint8)), None),  # the valid request the others differ from
        (lambda: triton.InferInput("PIXELS", [1, 4, 4, 3], "FP32").set_data_from_numpy(np.zeros((1, 4, 4, 3), np.float32)), "datatype FP32"),
        (lambda: triton.InferInput("IMAGE", [1, 1], "BYTES").set_data_from_numpy(np.array([[b"x"]], dtype=np.object_)), "shape [1, 1]"),
        (lambda: triton.InferInput("LOGITS", [1], "BYTES").set_data_from_numpy(np.array([b"x"], dtype=np.object_)), "exactly one input"),
        (lambda: image_input(b"not an image"), "IMAGE[0]"),
    ],
)
def test_wrong_dtype_shape_or_content_is_invalid_argument(client, tensor, words):
    if words is None:
        assert client.infer(MODEL, [tensor()]).as_numpy("LABELS").shape == (1, 4, 4)
        return
    assert words in refused(lambda: client.infer(MODEL, [tensor()]), "INVALID_ARGUMENT")


def test_a_batch_over_grpcs_default_message_limit_works_and_the_configured_limit_holds(server, client):
    rgb = np.stack([scene(9, (1024, 768)), scene(10, (1024, 768))])
    assert rgb.nbytes > GRPC_DEFAULT_LIMIT
    result = client.infer(MODEL, [pixels_input(rgb)], client_timeout=60)
    labels = result.as_numpy("LABELS")
    assert labels.shape == (2, 768, 1024)
    np.testing.assert_array_equal(labels[1], raw_labels(server, image_bytes(rgb[1], "PNG"), "image/png"))
    too_big = np.zeros((1, 4096, 5600, 3), np.uint8)  # over grpc_max_message_bytes' default (64 MiB)
    refused(lambda: client.infer(MODEL, [pixels_input(too_big)], client_timeout=60), "RESOURCE_EXHAUSTED")


def test_keys_drain_and_shutdown():
    """With API keys on, a call needs one (UNAUTHENTICATED without); after SIGTERM's first step
    (``begin_drain``) the server is not ready and inference is UNAVAILABLE; after shutdown the gRPC
    port is closed."""
    key = "grpc-test-key"
    settings = Settings(
        host="127.0.0.1", port=free_port(), grpc_port=free_port(), device="cpu", log_level="warning",
        api_key_hashes=[hashlib.sha256(key.encode()).hexdigest()], auth_exempt_paths=["/readyz", "/inference.GRPCInferenceService/ServerLive"],
    )  # fmt: skip
    server = build_server(settings, TorchBackend(net=small_net()))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    signed = {"authorization": f"Bearer {key}"}
    with triton.InferenceServerClient(f"127.0.0.1:{settings.grpc_port}") as client:
        try:
            deadline = time.monotonic() + 60
            while server.grpc is None:  # set once the model is loaded and the port is listening
                assert thread.is_alive() and time.monotonic() < deadline, "gRPC did not start"
                time.sleep(0.05)
            assert client.is_server_live()  # an exempt method
            assert "API key is required" in refused(lambda: client.is_server_ready(), "UNAUTHENTICATED")
            refused(lambda: client.is_server_ready(headers={"x-api-key": "wrong"}), "UNAUTHENTICATED")
            assert client.is_server_ready(headers=signed)
            server.repository.begin_drain()
            assert not client.is_server_ready(headers=signed) and not client.is_model_ready(MODEL, headers=signed)
            refused(lambda: client.infer(MODEL, [image_input(jpeg(1))], headers=signed), "UNAVAILABLE")
        finally:
            server.should_exit = True
            thread.join(30)
        assert not thread.is_alive()
        refused(lambda: client.is_server_live(client_timeout=10), "UNAVAILABLE")  # nothing listens any more
