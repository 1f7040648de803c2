"""Decoding and PNG encoding in worker processes (issue 17): the same answers, errors and limits
as the in-process threads, pixels and labels through shared memory that is never leaked."""

from __future__ import annotations

import base64
import copy
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from helpers import image_bytes, metric, png_claiming, post, raw_labels, running_server, scene, small_net

from service.backends.pytorch import TorchBackend

SHM = Path("/dev/shm")


def blocks() -> set[str]:
    return {p.name for p in SHM.iterdir() if p.name.startswith("psm_")} if SHM.is_dir() else set()


@pytest.fixture(scope="module")
def net():
    return small_net(seed=11)


def test_processes_answer_exactly_as_threads_do(net):
    images = [image_bytes(scene(i, (200, 150)), "JPEG", quality=90) for i in range(6)] + [image_bytes(scene(9))]
    with running_server(TorchBackend(net=copy.deepcopy(net)), codec_processes=0) as url:
        expected_png = [post(url, data, "png", "image/jpeg").content for data in images]
        expected_raw = [raw_labels(url, data) for data in images]
    before = blocks()
    with running_server(TorchBackend(net=copy.deepcopy(net)), codec_processes=2, max_queue_delay_ms=20) as url:
        assert httpx.get(f"{url}/v1/models").status_code == 200
        with ThreadPoolExecutor(6) as pool:  # concurrent: several blocks in flight at once
            pngs = list(pool.map(lambda d: post(url, d, "png", "image/jpeg"), images))
        assert [r.content for r in pngs] == expected_png  # byte for byte: the same encoder, in a worker
        assert all(np.array_equal(raw_labels(url, d), want) for d, want in zip(images, expected_raw))
        overlay = post(url, images[0], "overlay", "image/jpeg")  # keeps the image: decoded in-process
        assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/jpeg"
        bad = post(url, images[0][:200], "png", "image/jpeg")  # truncated: the worker's ImageError
        assert bad.status_code == 400 and bad.json()["error"] == "corrupt_image"
        bomb = post(url, png_claiming(30000, 30000), "png")
        assert bomb.status_code == 413
        body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], "data": [base64.b64encode(images[6]).decode()]}],
                "outputs": [{"name": "LABELS_PNG"}]}  # fmt: skip
        v2 = httpx.post(f"{url}/v2/models/{httpx.get(url + '/v1/models').json()['default']}/infer", json=body, timeout=60)
        assert v2.status_code == 200, v2.text
        assert metric(httpx.get(f"{url}/metrics").text, "deeplab_decoded_images_total") == 7 + 7 + 1 + 1  # png, raw, overlay, v2
    assert blocks() <= before, "shared memory blocks were left behind"


def test_the_default_is_threads_on_the_cpu_and_processes_on_a_gpu():
    from service.repository.registry import codec_processes
    from service.settings import Settings

    assert codec_processes(Settings(device="cpu")) == 0
    assert codec_processes(Settings(device="cuda", codec_processes=None)) == min(8, len(os.sched_getaffinity(0)) // 2)
    assert codec_processes(Settings(device="cuda", codec_processes=0)) == 0
