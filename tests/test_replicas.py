"""One model on several devices behind one batcher (issue 17): batches go to idle replicas, so
two devices compute at once from one queue. On this CPU-only machine the devices are two CPU
replicas; the same code places one replica per GPU (``device=cuda`` with several GPUs)."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
from helpers import SlowBackend, image_bytes, labels_of, post, running_server, scene, small_net

from model import DEFAULT_MODEL
from service.backends import create_backend
from service.backends.pytorch import TorchBackend
from service.backends.replicas import Replicas, expand_devices


def test_devices_expand_to_one_replica_each():
    assert expand_devices("cuda", gpus=2) == ["cuda:0", "cuda:1"]
    assert expand_devices("cuda", gpus=1) == ["cuda"]
    assert expand_devices("cuda:0, cuda:2", gpus=4) == ["cuda:0", "cuda:2"]
    assert expand_devices("cpu", gpus=0) == ["cpu"]
    backend = create_backend(DEFAULT_MODEL, device="cpu,cpu")
    assert isinstance(backend, Replicas) and [r.device for r in backend.replicas] == ["cpu", "cpu"]
    assert isinstance(create_backend(DEFAULT_MODEL, device="cpu"), TorchBackend)


def test_two_replicas_compute_two_batches_at_once_from_one_queue():
    net = small_net(seed=8)
    reference = TorchBackend(net=copy.deepcopy(net))
    reference.load()
    first, second = SlowBackend(net=copy.deepcopy(net)), SlowBackend(net=copy.deepcopy(net))
    first.release = second.release  # one gate for both
    images = [scene(20 + i) for i in range(2)]
    with running_server(Replicas([first, second]), max_batch_size=1, max_queue_delay_ms=0) as url:
        served = httpx.get(f"{url}/v1/models").json()["models"][0]
        assert served["device"] == "cpu,cpu" and served["backend_details"]["replicas"] == ["cpu", "cpu"]
        assert served["batching"]["instances"] == 2
        with ThreadPoolExecutor(2) as pool, first.holding():
            answers = [pool.submit(post, url, image_bytes(im)) for im in images]
            first.wait_until(lambda b: b.images_held == 1, "a batch computes on the first replica")
            second.wait_until(lambda b: b.images_held == 1, "a batch computes on the second replica at the same time")
        for image, answer in zip(images, answers):
            assert answer.result().status_code == 200
            assert np.array_equal(labels_of(answer.result()), reference.infer(image[None])[0])
