"""Bad input over real HTTP: always a 4xx with a JSON ``{error, detail}`` body, and the server
keeps serving. Also every accepted image format, and animated images (first frame is served)."""

from __future__ import annotations

import copy
import http.client
import io
import json
import socket

import httpx
import numpy as np
import pytest
from PIL import Image

from model.pipeline import Segmenter
from service.backends.pytorch import TorchBackend
from helpers import png_claiming
from helpers import image_bytes, labels_of, post, running_server, scene, small_net

MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def net():
    return small_net(seed=1)


@pytest.fixture(scope="module")
def server(net):
    with running_server(TorchBackend(net=copy.deepcopy(net), precision="fp32"), max_upload_bytes=MAX_BYTES, max_image_pixels=MAX_PIXELS) as url:
        yield url


def animated(fmt: str, frames: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    first, *rest = [Image.fromarray(f) for f in frames]
    first.save(buf, format=fmt, save_all=True, append_images=rest, **({"lossless": True} if fmt == "WEBP" else {}))
    return buf.getvalue()


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["detail"], body


@pytest.mark.parametrize(
    "fmt,save,content_type",
    [("PNG", {}, "image/png"), ("WEBP", {"lossless": True}, "image/webp"), ("BMP", {}, "image/bmp"), ("TIFF", {}, "image/tiff"), ("JPEG", {"quality": 100}, "image/jpeg")],
)
def test_every_supported_format(server, net, fmt, save, content_type):
    rgb = scene(7)
    data = image_bytes(rgb, fmt, **save)
    r = post(server, data, content_type=content_type)
    assert r.status_code == 200
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert np.array_equal(labels_of(r), Segmenter(copy.deepcopy(net)).predict([decoded])[0])


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_animated_images_are_served_by_their_first_frame(server, fmt):
    first, second = scene(8), scene(9)
    r = post(server, animated(fmt, [first, second]), content_type=f"image/{fmt.lower()}")
    assert r.status_code == 200
    assert np.array_equal(labels_of(r), labels_of(post(server, image_bytes(first, "PNG"))))


def test_bad_inputs_get_json_4xx_and_the_server_serves_on(server):
    good = image_bytes(scene(10), "JPEG")
    cases = [
        (post(server, b"", content_type="image/png"), 400, "empty_body"),
        (post(server, b"hello, this is text", content_type="image/png"), 415, "unsupported_media_type"),
        (post(server, good[: len(good) // 2], content_type="image/jpeg"), 400, "corrupt_image"),
        (post(server, b"\x89PNG\r\n\x1a\n" + b"\0" * 40, content_type="image/png"), 400, "corrupt_image"),
        (post(server, good, content_type="text/plain"), 415, "unsupported_media_type"),
        (post(server, good, content_type="application/json"), 415, "unsupported_media_type"),
        (post(server, animated("GIF", [scene(1), scene(2)]), content_type="image/gif"), 415, "unsupported_media_type"),
        (post(server, png_claiming(100_000, 100_000)), 413, "image_too_large"),  # PIL's bomb guard
        (post(server, png_claiming(2000, 1000)), 413, "image_too_large"),  # our pixel limit, header only
        (post(server, png_claiming(0, 10)), 400, "corrupt_image"),  # zero width
        (post(server, image_bytes(np.zeros((1, 5000, 3), np.uint8))), 422, "bad_dimensions"),  # resizes to 0 px
        (post(server, good, fmt="gif"), 422, "invalid_parameter"),
        (post(server, good, fmt="json", mask="zip"), 422, "invalid_parameter"),
        (httpx.post(f"{server}/segment", files={"file": ("x.jpg", good, "image/jpeg")}), 400, "bad_request"),
        (httpx.post(f"{server}/segment", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}), 400, "bad_request"),
        (httpx.get(f"{server}/nope"), 404, "not_found"),
        (httpx.get(f"{server}/segment"), 405, "method_not_allowed"),
    ]
    for response, status, code in cases:
        assert_error(response, status, code)
    assert post(server, good, content_type="image/jpeg").status_code == 200


def test_upload_over_the_byte_limit_declared_in_content_length(server):
    r = post(server, b"\xff" * (MAX_BYTES + 1), content_type="image/jpeg")
    assert_error(r, 413, "upload_too_large")


def test_upload_over_the_byte_limit_is_refused_while_streaming(server):
    """A chunked upload that never ends: the server can only answer if it counts while reading."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"\0" * 65536
        for _ in range(MAX_BYTES // len(chunk) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        # parses one response by its Content-Length; a premature close raises, never spins
        response = http.client.HTTPResponse(sock)
        response.begin()
        assert response.status == 413
        assert json.loads(response.read())["error"] == "upload_too_large"
    assert post(server, image_bytes(scene(11))).status_code == 200
