"""Overload and client behaviour over real HTTP: 429 on a full queue, 504 on a queue timeout,
disconnected clients dropped before inference, bad images failing alone.

``SlowBackend`` is the real torch backend made deliberately slow, so that queues fill up
predictably on any machine."""

from __future__ import annotations

import copy
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from helpers import SlowBackend, image_bytes, labels_of, metric, post, running_server, scene, small_net


@pytest.fixture(scope="module")
def net():
    return small_net(seed=2)


def images_done(url: str) -> float:
    return metric(httpx.get(url + "/metrics").text, "deeplab_images_total")


def test_full_queue_gets_429_with_retry_after(net):
    backend = SlowBackend(net=copy.deepcopy(net), delay_s=0.4)
    with running_server(backend, max_batch_size=1, queue_capacity=2, max_queue_delay_ms=0) as url:
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda i: post(url, image_bytes(scene(i))), range(8)))
        codes = sorted(r.status_code for r in responses)
        assert 429 in codes and 200 in codes
        assert codes.count(200) <= 3 + 1  # one running + two queued (+1 freed while others arrived)
        for r in responses:
            if r.status_code == 429:
                assert r.json()["error"] == "queue_full" and int(r.headers["retry-after"]) >= 1
        assert images_done(url) == codes.count(200)
        assert metric(httpx.get(url + "/metrics").text, "deeplab_requests_total", endpoint="/segment", code="429") == codes.count(429)


def test_queued_past_the_timeout_gets_504_and_is_never_computed(net):
    backend = SlowBackend(net=copy.deepcopy(net), delay_s=1.0)
    with running_server(backend, max_batch_size=1, request_timeout_s=0.3, max_queue_delay_ms=0) as url:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, url, image_bytes(scene(1)))
            time.sleep(0.1)  # the first one is running; the second waits behind it
            second = pool.submit(post, url, image_bytes(scene(2)))
            a, b = first.result(), second.result()
        assert a.status_code == 200
        assert b.status_code == 504 and b.json()["error"] == "queue_timeout"
        time.sleep(0.2)
        assert images_done(url) == 1
        assert metric(httpx.get(url + "/metrics").text, "deeplab_queue_depth") == 0


def test_client_that_disconnects_while_queued_is_dropped(net):
    backend = SlowBackend(net=copy.deepcopy(net), delay_s=1.0)
    with running_server(backend, max_batch_size=1, max_queue_delay_ms=0) as url:
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(post, url, image_bytes(scene(1)))
            time.sleep(0.1)
            with pytest.raises(httpx.ReadTimeout):  # gives up and closes its connection
                httpx.post(f"{url}/segment", content=image_bytes(scene(2)), headers={"content-type": "image/png"}, timeout=0.3)
            assert first.result().status_code == 200
        time.sleep(1.5)  # long enough for a second batch, had it been run
        text = httpx.get(url + "/metrics").text
        assert metric(text, "deeplab_images_total") == 1
        assert metric(text, "deeplab_requests_total", endpoint="/segment", code="499") == 1
        assert metric(text, "deeplab_queue_depth") == 0


def test_bad_images_fail_alone_amid_concurrent_good_ones(net):
    backend = SlowBackend(net=copy.deepcopy(net), delay_s=0.2)
    with running_server(backend, max_batch_size=8, max_queue_delay_ms=100) as url:
        good = [image_bytes(scene(20 + i)) for i in range(6)]
        expected = [labels_of(post(url, g)) for g in good]
        bodies = [good[0], b"junk", good[1], good[2][:50], good[3], b"", good[4], good[5]]
        with ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda b: post(url, b), bodies))
        assert [r.status_code for r in responses] == [200, 415, 200, 400, 200, 400, 200, 200]
        got = [labels_of(r) for r in responses if r.status_code == 200]
        want = [expected[i] for i in (0, 1, 3, 4, 5)]
        assert len(got) == len(want) and all(np.array_equal(g, w) for g, w in zip(got, want))
        assert max(int(r.headers["x-batch-size"]) for r in responses if r.status_code == 200) > 1
