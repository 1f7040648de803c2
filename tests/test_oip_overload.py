"""Overload over the Open Inference Protocol: a full queue is 429 + Retry-After over HTTP /v2 and
RESOURCE_EXHAUSTED (trailer retry-after) over gRPC; a request queued past request_timeout_s is
504 / DEADLINE_EXCEEDED and never computed. ``SlowBackend`` holds batches until the test
releases them, and the queue is read from /metrics, so nothing here depends on timing."""

from __future__ import annotations

import contextlib
import copy
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from helpers import SlowBackend, free_port, image_bytes, metric, running_server, scene, small_net, wait_for_metric
from tritonclient.utils import InferenceServerException

from model import DEFAULT_MODEL

MODEL = DEFAULT_MODEL


@pytest.fixture(scope="module")
def net():
    return small_net(seed=4)


def v2_infer(url: str, seed: int) -> httpx.Response:
    body = {"inputs": [{"name": "PIXELS", "datatype": "UINT8", "shape": [1, 48, 64, 3], "data": scene(seed).ravel().tolist()}]}
    return httpx.post(f"{url}/v2/models/{MODEL}/infer", json=body, timeout=60)


def grpc_infer(port: int, seed: int):
    client = triton.InferenceServerClient(f"127.0.0.1:{port}")
    inp = triton.InferInput("IMAGE", [1], "BYTES")
    inp.set_data_from_numpy(np.array([image_bytes(scene(seed))], dtype=object))
    try:
        return client.infer(MODEL, [inp], client_timeout=60)
    except InferenceServerException as exc:
        return exc


@contextlib.contextmanager
def held_server(net, clients: int, **settings):
    """(backend, url, gRPC port, client pool) of a server whose batches wait for the test."""
    backend = SlowBackend(net=copy.deepcopy(net))
    port = free_port()
    with (
        running_server(backend, max_batch_size=1, max_queue_delay_ms=0, grpc_port=port, **settings) as url,
        ThreadPoolExecutor(clients) as pool,
        backend.holding(),
    ):
        yield backend, url, port, pool


def test_a_full_queue_is_429_over_http_and_resource_exhausted_over_grpc(net):
    with held_server(net, 3, queue_capacity=2) as (backend, url, port, pool):
        admitted = [pool.submit(v2_infer, url, 0)]
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        admitted += [pool.submit(v2_infer, url, 1), pool.submit(grpc_infer, port, 2)]
        wait_for_metric(url, "deeplab_queue_depth", 2, "two requests are queued")
        over_http, over_grpc = v2_infer(url, 3), grpc_infer(port, 4)
        backend.release.set()
        assert [f.result().status_code for f in admitted[:2]] == [200, 200]
        assert admitted[2].result().as_numpy("LABELS").shape == (1, 48, 64)
    assert over_http.status_code == 429 and int(over_http.headers["retry-after"]) >= 1
    assert "queue is full" in over_http.json()["error"]  # the protocol's error form
    assert isinstance(over_grpc, InferenceServerException) and over_grpc.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "queue is full" in over_grpc.message()


def test_queued_past_the_timeout_is_504_over_http_and_deadline_exceeded_over_grpc(net):
    with held_server(net, 1, request_timeout_s=0.3) as (backend, url, port, pool):
        first = pool.submit(v2_infer, url, 1)
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        over_http, over_grpc = v2_infer(url, 2), grpc_infer(port, 3)  # queued behind the held batch
        backend.release.set()
        assert first.result().status_code == 200
        text = httpx.get(url + "/metrics").text
    assert over_http.status_code == 504 and "in the queue" in over_http.json()["error"]
    assert isinstance(over_grpc, InferenceServerException) and over_grpc.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert backend.batches_started == 1 and metric(text, "deeplab_images_total") == 1  # neither was computed
