"""Several images in one /segment request (issue 16 part 3), against real servers on 127.0.0.1:
every image's answer equals what it gets alone, a bad image gets its own error entry, the images
share model batches, and each image is admitted (memory budget, queue) as a request of its own."""

from __future__ import annotations

import base64
import dataclasses
import io
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import SCALE, SlowBackend, image_bytes, labels_of, metric, png_claiming, post, running_server, scene, small_net, wait_for_metric
from PIL import Image

from model import DEFAULT_MODEL, get_config
from model.pipeline.buckets import InputPolicy
from service.admission import estimate
from service.backends.pytorch import TorchBackend

IMAGES = [
    ("a.png", image_bytes(scene(1)), "image/png"),
    ("b.jpg", image_bytes(scene(2, (100, 80)), "JPEG", quality=95), "image/jpeg"),
    ("c.webp", image_bytes(scene(3, (50, 70)), "WEBP", lossless=True), "image/webp"),
]


def send(url: str, files: list, **params) -> httpx.Response:
    return httpx.post(f"{url}/segment", params=params, files=[("image", f) for f in files], timeout=60)


def alone(url: str, data: bytes, fmt: str, **params) -> httpx.Response:
    """The same image in a request of its own."""
    response = send(url, [("x", data, "image/png")], format=fmt, **params)
    assert response.status_code == 200, response.text
    return response


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=small_net()), max_batch_size=4, max_queue_delay_ms=5, max_images_per_request=4) as url:
        yield url


def test_json_results_equal_each_image_alone(server):
    r = send(server, IMAGES, format="json", mask="rle")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json", r.text
    body = r.json()
    assert body["model"] == get_config(DEFAULT_MODEL).name
    assert [e["index"] for e in body["results"]] == [0, 1, 2]
    assert [e["filename"] for e in body["results"]] == ["a.png", "b.jpg", "c.webp"]
    for entry, (_, data, _) in zip(body["results"], IMAGES):
        single = alone(server, data, "json", mask="rle").json()
        for key in ("width", "height", "classes", "mask"):
            assert entry[key] == single[key], key
        assert entry["batch_size"] >= 1 and entry["timing"]["total_ms"] > 0
    assert [(e["width"], e["height"]) for e in body["results"]] == [SCALE, (100, 80), (50, 70)]
    assert len({len(e["classes"]) for e in body["results"]} | {0}) > 1  # the maps are not empty


@pytest.mark.parametrize("fmt, field", [("png", "png_base64"), ("raw", "raw_base64")])
def test_label_maps_come_base64_and_equal_each_image_alone(server, fmt, field):
    r = send(server, IMAGES, format=fmt)
    assert r.status_code == 200, r.text
    for entry, (_, data, _) in zip(r.json()["results"], IMAGES):
        single = alone(server, data, fmt)
        raw = base64.b64decode(entry[field])
        if fmt == "png":
            got, want = np.asarray(Image.open(io.BytesIO(raw))), labels_of(single)
        else:
            got = np.frombuffer(raw, np.uint8).reshape(entry["height"], entry["width"])
            want = np.frombuffer(single.content, np.uint8).reshape(int(single.headers["x-height"]), int(single.headers["x-width"]))
        assert got.shape == (entry["height"], entry["width"]) and np.array_equal(got, want)


def test_overlays_come_base64_at_each_images_size(server):
    r = send(server, IMAGES[:2], format="overlay")
    assert r.status_code == 200, r.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(e["jpeg_base64"]))).size for e in r.json()["results"]]
    assert sizes == [SCALE, (100, 80)]


def test_one_image_in_multipart_is_answered_as_before(server):
    r = send(server, IMAGES[:1], format="png")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert np.array_equal(labels_of(r), labels_of(post(server, IMAGES[0][1])))


def test_a_bad_image_gets_its_own_error_and_the_others_are_answered(server):
    files = [IMAGES[0], ("junk.bin", b"not an image at all", "image/png"), IMAGES[1], ("bomb.png", png_claiming(50_000, 50_000), "image/png")]
    r = send(server, files, format="png")
    assert r.status_code == 200, r.text
    good0, junk, good1, bomb = r.json()["results"]
    assert junk == {"index": 1, "filename": "junk.bin", "status": 415, "error": "unsupported_media_type", "detail": junk["detail"]}
    assert (bomb["status"], bomb["error"], bomb["filename"]) == (413, "image_too_large", "bomb.png") and bomb["detail"]
    for entry, (_, data, _) in ((good0, IMAGES[0]), (good1, IMAGES[1])):
        got = np.asarray(Image.open(io.BytesIO(base64.b64decode(entry["png_base64"]))))
        assert np.array_equal(got, labels_of(alone(server, data, "png")))


def test_all_images_refused_is_an_error_with_each_images_entry(server):
    files = [("a", b"", "image/png"), ("b", b"GIF89a" + bytes(20), "image/gif")]
    r = send(server, files, format="json")
    assert r.status_code == 415, r.text  # the highest of 400 (empty) and 415 (GIF)
    body = r.json()
    assert body["error"] == "all_images_failed" and "#0 empty_body" in body["detail"]
    assert [(e["status"], e["error"]) for e in body["results"]] == [(400, "empty_body"), (415, "unsupported_media_type")]


def test_more_images_than_allowed_is_413_and_nothing_is_computed(server):
    before = metric(httpx.get(server + "/metrics").text, "deeplab_decoded_images_total")
    r = send(server, IMAGES + IMAGES, format="json")  # 6 > max_images_per_request=4
    assert r.status_code == 413 and r.json()["error"] == "too_many_images", r.text
    assert "4" in r.json()["detail"]
    assert metric(httpx.get(server + "/metrics").text, "deeplab_decoded_images_total") == before


def test_more_images_than_the_queue_holds_is_413():
    with running_server(TorchBackend(net=small_net()), queue_capacity=2, max_images_per_request=8) as url:
        r = send(url, IMAGES, format="json")
        assert r.status_code == 413 and r.json()["error"] == "too_many_images" and "queue_capacity" in r.json()["detail"]
        assert send(url, IMAGES[:2], format="json").status_code == 200


def test_the_images_of_one_request_share_a_batch():
    """With a long batching delay a batch runs early only when full: four images alone would each
    wait the whole delay in a batch of one."""
    with running_server(TorchBackend(net=small_net()), max_batch_size=4, max_queue_delay_ms=20_000) as url:
        same_size = [(f"{i}.png", image_bytes(scene(i)), "image/png") for i in range(4)]
        r = httpx.post(f"{url}/segment", params={"format": "json"}, files=[("image", f) for f in same_size], timeout=15)
        assert r.status_code == 200, r.text
        assert [e["batch_size"] for e in r.json()["results"]] == [4, 4, 4, 4]


def _peak_bytes(data: bytes, size, fmt: str) -> int:
    cfg = dataclasses.replace(get_config(DEFAULT_MODEL), test_scale=SCALE)
    return estimate(InputPolicy.for_config(cfg), "PNG", size, len(data), fmt, False, True).peak_bytes


def test_every_image_reserves_its_own_memory_until_the_answer_is_sent():
    data = image_bytes(scene(5))
    one = _peak_bytes(data, SCALE, "png")
    backend = SlowBackend(net=small_net())
    with running_server(backend, max_batch_size=8, max_queue_delay_ms=50) as url, ThreadPoolExecutor(1) as pool:
        with backend.holding():
            pending = pool.submit(send, url, [("x.png", data, "image/png")] * 3, format="png")
            backend.wait_until(lambda b: b.images_held == 3, "the three images are computing in one batch")
            assert metric(httpx.get(url + "/metrics").text, "deeplab_memory_reserved_bytes") == 3 * one
        assert pending.result().status_code == 200
        wait_for_metric(url, "deeplab_memory_reserved_bytes", 0, "every reservation is released")


def test_a_request_that_does_not_fit_the_budget_is_refused_whole_and_releases_what_it_took():
    data = image_bytes(scene(6))
    one = _peak_bytes(data, SCALE, "json")
    with running_server(TorchBackend(net=small_net()), memory_budget_bytes=int(2.5 * one)) as url:
        r = send(url, [("x.png", data, "image/png")] * 3, format="json")
        assert r.status_code == 503 and r.json()["error"] == "memory_busy" and r.headers["retry-after"] == "1", r.text
        assert metric(httpx.get(url + "/metrics").text, "deeplab_memory_reserved_bytes") == 0
        assert send(url, [("x.png", data, "image/png")] * 2, format="json").status_code == 200


def test_other_requests_are_unaffected_by_a_bad_multi_request(server):
    with ThreadPoolExecutor(4) as pool:
        bad = [pool.submit(send, server, [("j", b"junk", "image/png")] * 3, format="png") for _ in range(3)]
        good = [pool.submit(post, server, IMAGES[0][1]) for _ in range(3)]
        assert {f.result().status_code for f in bad} == {415}
        assert {f.result().status_code for f in good} == {200}
