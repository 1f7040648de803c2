"""service.client against real servers on 127.0.0.1: the same labels as a raw POST, every input
kind, several images, typed errors, API keys, and retries on 429 that honour Retry-After."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import SCALE, SlowBackend, image_bytes, metric, post, running_server, scene, small_net, wait_for_metric
from PIL import Image

from service.auth import digest_of
from service.backends.pytorch import TorchBackend
from service.client import AsyncSegmentationClient, SegmentationClient, SegmentationError, encode_image, retry_after

RGB = scene(11)
JPEG = image_bytes(scene(12, (90, 60)), "JPEG", quality=95)


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=small_net()), max_batch_size=4, max_queue_delay_ms=5, max_images_per_request=3) as url:
        yield url


def raw_labels(url: str, data: bytes) -> np.ndarray:
    r = post(url, data, "raw", content_type="image/png")
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, np.uint8).reshape(int(r.headers["x-height"]), int(r.headers["x-width"]))


def test_segment_returns_the_labels_of_a_raw_post_for_every_input_kind(server, tmp_path):
    path = tmp_path / "photo.jpg"
    path.write_bytes(JPEG)
    want_rgb, want_jpeg = raw_labels(server, image_bytes(RGB)), raw_labels(server, JPEG)
    assert len(np.unique(want_rgb)) > 1
    with SegmentationClient(server) as client:
        for image, want in [(RGB, want_rgb), (Image.fromarray(RGB), want_rgb), (image_bytes(RGB), want_rgb), (path, want_jpeg), (str(path), want_jpeg)]:
            for fmt in ("png", "raw"):
                result = client.segment(image, format=fmt)
                assert result.labels.dtype == np.uint8 and np.array_equal(result.labels, want), (type(image), fmt)
        assert client.segment(path).filename == "photo.jpg"
        stats = client.segment(RGB, format="json", mask="rle").json
        assert (stats["width"], stats["height"]) == SCALE and stats["mask"]["encoding"] == "rle"
        overlay = client.segment(JPEG, format="overlay").overlay
        assert Image.open(io.BytesIO(overlay)).size == (90, 60)


def test_segment_many_equals_segment_and_keeps_per_image_errors(server):
    images = [scene(i) for i in range(5)] + [b"not an image"]  # 3 per request: two requests
    with SegmentationClient(server, images_per_request=3) as client:
        results = client.segment_many(images)
        assert len(results) == 6
        for image, result in zip(images[:5], results[:5]):
            assert np.array_equal(result.labels, client.segment(image).labels)
        assert isinstance(results[5], SegmentationError) and (results[5].status, results[5].code) == (415, "unsupported_media_type")
        stats = client.segment_many(images[:2], format="json")
        assert [s.json["width"] for s in stats] == [SCALE[0]] * 2
        assert isinstance(client.segment_many([b""])[0], SegmentationError)  # one image alone, refused


def test_async_client_matches_the_sync_one(server):
    images = [scene(i) for i in range(4)]

    async def run():
        async with AsyncSegmentationClient(server, images_per_request=3) as client:
            one = await client.segment(images[0])
            many = await client.segment_many(images)
            return one, many, await client.models(), await client.health(), await client.ready()

    one, many, models, alive, ready = asyncio.run(run())
    with SegmentationClient(server) as client:
        want = [client.segment(image).labels for image in images]
    assert np.array_equal(one.labels, want[0])
    assert all(np.array_equal(r.labels, w) for r, w in zip(many, want))
    assert models["models"][0]["config"] and alive and ready


def test_errors_are_typed_from_the_services_body(server):
    with SegmentationClient(server) as client:
        with pytest.raises(SegmentationError) as raised:
            client.segment(b"\x89PNG\r\n\x1a\n truncated")
        assert raised.value.status == 400 and raised.value.code == "corrupt_image" and raised.value.detail
        assert client.health() and client.ready()
        assert client.models()["models"][0]["classes"][0] == "sky"
    with pytest.raises(ValueError):
        encode_image(np.zeros((4, 4), np.float32))
    with SegmentationClient("http://127.0.0.1:9") as gone:  # nothing listens on the discard port
        assert not gone.health() and not gone.ready()


def test_api_key_is_sent_as_a_bearer_token():
    with running_server(TorchBackend(net=small_net()), api_key_hashes=[digest_of("s3cret-key")]) as url:
        with SegmentationClient(url) as anonymous, pytest.raises(SegmentationError) as raised:
            anonymous.segment(RGB)
        assert (raised.value.status, raised.value.code) == (401, "unauthorized")
        with SegmentationClient(url, api_key="wrong") as wrong, pytest.raises(SegmentationError):
            wrong.models()
        with SegmentationClient(url, api_key="s3cret-key") as client:
            assert np.array_equal(client.segment(RGB).labels, client.segment_many([RGB, RGB])[1].labels)
            assert client.models()["default"]


def test_retry_after_reads_seconds_and_dates():
    def response(value):
        return httpx.Response(429, headers={} if value is None else {"retry-after": value})

    assert retry_after(response("3")) == 3 and retry_after(response(None)) is None and retry_after(response("soon")) is None
    later = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    assert 25 < retry_after(response(later)) <= 30


@contextlib.contextmanager
def full_queue(backend: SlowBackend, data: bytes):
    """A server whose queue (of one, batches of one) is full: one image computing, held by the
    backend, and one queued. Yields its URL; both requests are answered 200 on leaving the block."""
    with running_server(backend, max_batch_size=1, max_queue_delay_ms=0, queue_capacity=1) as url, ThreadPoolExecutor(2) as pool:
        with backend.holding():
            first = pool.submit(post, url, data)
            backend.wait_until(lambda b: b.images_held == 1, "the first image is computing")
            second = pool.submit(post, url, data)
            wait_for_metric(url, "deeplab_queue_depth", 1, "the second image is queued")
            yield url
        assert first.result().status_code == 200 and second.result().status_code == 200


def refusals(url: str) -> float:
    return metric(httpx.get(url + "/metrics").text, "deeplab_requests_total", endpoint="/segment", code="429")


def test_client_retries_429_until_the_queue_has_room():
    data = image_bytes(RGB)
    backend = SlowBackend(net=small_net())
    with full_queue(backend, data) as url, ThreadPoolExecutor(1) as pool:
        with SegmentationClient(url, max_retries=0) as impatient, pytest.raises(SegmentationError) as raised:
            impatient.segment(data)
        assert (raised.value.status, raised.value.code, raised.value.retry_after_s) == (429, "queue_full", 1)
        wait_for_metric(url, "deeplab_requests_total", 1, "the refusal is counted", endpoint="/segment", code="429")
        with SegmentationClient(url, max_retries=1000, max_retry_wait_s=0.05) as client:
            patient = pool.submit(client.segment, data, format="raw")
            deadline = time.monotonic() + 30
            while refusals(url) < 2:  # the patient client has been refused at least once
                assert time.monotonic() < deadline and not patient.done(), "the client was never refused"
                time.sleep(0.01)
            assert not patient.done()
            backend.release.set()  # the held batch runs: the queue drains and a retry gets in
            result = patient.result(timeout=60)
        want = raw_labels(url, data)
    assert np.array_equal(result.labels, want) and len(np.unique(want)) > 1


def test_retries_are_bounded_and_the_last_refusal_is_raised():
    data = image_bytes(RGB)
    with full_queue(SlowBackend(net=small_net()), data) as url:
        with SegmentationClient(url, max_retries=3, max_retry_wait_s=0.01) as client, pytest.raises(SegmentationError) as raised:
            client.segment(data)
        assert raised.value.status == 429
        wait_for_metric(url, "deeplab_requests_total", 4, "the first try and three retries are counted", endpoint="/segment", code="429")
