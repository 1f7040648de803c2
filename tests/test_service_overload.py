"""Overload and client behaviour over real HTTP: 429 on a full queue, 504 on a queue timeout,
disconnected clients dropped before inference (499, also mid-upload), bad images failing alone.

``SlowBackend`` is the real torch backend holding each batch until the test releases it, so the
test knows which requests are computing and which are queued (read from /metrics) on any
machine, however loaded: nothing here assumes an order from a sleep."""

from __future__ import annotations

import copy
import logging
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from helpers import SlowBackend, image_bytes, labels_of, metric, post, running_server, scene, small_net, wait_for_metric


@pytest.fixture(scope="module")
def net():
    return small_net(seed=2)


def metrics_of(url: str) -> str:
    return httpx.get(url + "/metrics").text


def test_full_queue_gets_429_with_retry_after(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    with (
        running_server(backend, max_batch_size=1, queue_capacity=2, max_queue_delay_ms=0) as url,
        ThreadPoolExecutor(3) as pool,
        backend.holding(),
    ):
        admitted = [pool.submit(post, url, image_bytes(scene(0)))]
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        admitted += [pool.submit(post, url, image_bytes(scene(i))) for i in (1, 2)]
        wait_for_metric(url, "deeplab_queue_depth", 2, "two requests are queued")
        refused = [post(url, image_bytes(scene(i))) for i in (3, 4, 5)]
        backend.release.set()
        accepted = [f.result() for f in admitted]
        assert [r.status_code for r in accepted] == [200] * 3
        for r in refused:
            assert r.status_code == 429, r.text
            assert r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        text = metrics_of(url)
        assert metric(text, "deeplab_images_total") == 3
        assert metric(text, "deeplab_requests_total", endpoint="/segment", code="429") == 3


def test_queued_past_the_timeout_gets_504_and_is_never_computed(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    with (
        running_server(backend, max_batch_size=1, request_timeout_s=0.3, max_queue_delay_ms=0) as url,
        ThreadPoolExecutor(1) as pool,
        backend.holding(),
    ):
        first = pool.submit(post, url, image_bytes(scene(1)))
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        second = post(url, image_bytes(scene(2)))  # queued behind the held batch until it times out
        backend.release.set()
        assert first.result().status_code == 200
        assert second.status_code == 504 and second.json()["error"] == "queue_timeout"
        text = metrics_of(url)
        assert metric(text, "deeplab_images_total") == 1 and backend.batches_started == 1
        assert metric(text, "deeplab_queue_depth") == 0


def raw_segment_request(port: int, body: bytes) -> bytes:
    head = f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: image/png\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def test_client_that_disconnects_while_queued_is_dropped(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    with (
        running_server(backend, max_batch_size=1, max_queue_delay_ms=0) as url,
        ThreadPoolExecutor(1) as pool,
        backend.holding(),
    ):
        first = pool.submit(post, url, image_bytes(scene(1)))
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        port = int(url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.sendall(raw_segment_request(port, image_bytes(scene(2))))
            wait_for_metric(url, "deeplab_queue_depth", 1, "the second request is queued")
        # the client has closed its connection while its request waits in the queue
        wait_for_metric(url, "deeplab_requests_total", 1, "the server answers 499", endpoint="/segment", code="499")
        assert metric(metrics_of(url), "deeplab_queue_depth") == 0
        backend.release.set()
        assert first.result().status_code == 200
        assert metric(metrics_of(url), "deeplab_images_total") == 1 and backend.batches_started == 1


def partial_upload(port: int, multipart: bool) -> socket.socket:
    """A connection that sends headers and a tenth of the declared body, then stalls."""
    body = image_bytes(scene(3))
    if multipart:
        boundary = "deeplab-test"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\nContent-Type: image/png\r\n\r\n'
        body = head.encode() + body + f"\r\n--{boundary}--\r\n".encode()
        content_type = f"multipart/form-data; boundary={boundary}"
    else:
        content_type = "image/png"
    head = f"POST /segment HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    client = socket.create_connection(("127.0.0.1", port), timeout=30)
    client.sendall(head.encode() + body[: len(body) // 10])
    return client


def test_clients_gone_mid_upload_are_499_with_one_log_line_and_healthz_stays_fast(net, caplog):
    caplog.set_level(logging.INFO)
    uploads = 200
    with running_server(SlowBackend(net=copy.deepcopy(net))) as url:
        port = int(url.rsplit(":", 1)[1])
        clients = [partial_upload(port, multipart=i % 2 == 1) for i in range(uploads)]
        # every upload is inside the /segment handler (plus this scrape itself)
        wait_for_metric(url, "deeplab_inflight_requests", uploads + 1, "every upload is being read")
        latencies, probing, done = [], threading.Event(), threading.Event()

        def probe_healthz():
            with httpx.Client(base_url=url, timeout=30) as probe:
                while True:  # at least one reading after the storm began, however fast it ends
                    t0 = time.perf_counter()
                    assert probe.get("/healthz").status_code == 200
                    latencies.append(time.perf_counter() - t0)
                    probing.set()
                    if done.is_set():
                        return

        with ThreadPoolExecutor(1) as pool:
            prober = pool.submit(probe_healthz)
            assert probing.wait(30), "the /healthz prober never got an answer"
            for client in clients:  # all at once: a disconnect storm
                client.close()
            try:
                wait_for_metric(url, "deeplab_requests_total", uploads, "every upload is answered 499", endpoint="/segment", code="499")
            finally:
                done.set()
            prober.result()
        text = metrics_of(url)
    assert metric(text, "deeplab_requests_total", endpoint="/segment") == uploads  # no 500 or other code
    assert metric(text, "deeplab_images_total") == 0  # nothing computed, nothing decoded into the queue
    assert max(latencies) < 1.0, f"/healthz took up to {max(latencies):.3f} s during the storm"
    segment_lines = [r for r in caplog.records if getattr(r, "path", None) == "/segment"]
    assert len(segment_lines) == uploads and {r.status for r in segment_lines} == {499}
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


def test_bad_images_fail_alone_amid_concurrent_good_ones(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    with running_server(backend, max_batch_size=8, max_queue_delay_ms=100) as url:
        good = [image_bytes(scene(20 + i)) for i in range(6)]
        backend.release.set()
        expected = [labels_of(post(url, g)) for g in good]
        bodies = [good[0], b"junk", good[1], good[2][:50], good[3], b"", good[4], good[5]]
        with ThreadPoolExecutor(8) as pool, backend.holding():
            futures = [pool.submit(post, url, body) for body in bodies]
            backend.wait_until(lambda b: b.batches_started == len(good) + 1, "a batch of good images computes")
            # the other good images queue up behind it, so they must form one batch once released
            wait_for_metric(url, "deeplab_queue_depth", 5 - backend.images_held, "every good image is queued or computing")
        responses = [f.result() for f in futures]
        assert [r.status_code for r in responses] == [200, 415, 200, 400, 200, 400, 200, 200]
        got = [labels_of(r) for r in responses if r.status_code == 200]
        want = [expected[i] for i in (0, 1, 3, 4, 5)]
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
        assert max(int(r.headers["x-batch-size"]) for r in responses if r.status_code == 200) > 1
