"""Several server processes on one port (``--workers``, issue 17): both serve, readiness and
/metrics speak for all of them, SIGTERM drains every one and the supervisor exits 0."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import tritonclient.grpc as triton
from helpers import REPO, free_port, image_bytes, metric, scene, small_net, wait_ready
from prometheus_client.parser import text_string_to_metric_families

from model import save_checkpoint
from service.workers import PUBLISH_INTERVAL_S, merge_expositions

ONE = """# HELP deeplab_images_total Images segmented
# TYPE deeplab_images_total counter
deeplab_images_total{model="m",version="1"} 3.0
# HELP deeplab_queue_depth Images waiting
# TYPE deeplab_queue_depth gauge
deeplab_queue_depth{model="m",version="1"} 2.0
# HELP deeplab_batch_size Images per batch
# TYPE deeplab_batch_size histogram
deeplab_batch_size_bucket{le="1.0",model="m",version="1"} 1.0
deeplab_batch_size_bucket{le="+Inf",model="m",version="1"} 2.0
deeplab_batch_size_count{model="m",version="1"} 2.0
deeplab_batch_size_sum{model="m",version="1"} 3.0
"""


def test_expositions_merge_with_a_worker_label():
    merged = merge_expositions({0: ONE, 1: ONE.replace("3.0", "5.0")}).decode()
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    assert families["deeplab_images"].type == "counter" and families["deeplab_batch_size"].type == "histogram"
    assert metric(merged, "deeplab_images_total", worker="0") == 3 and metric(merged, "deeplab_images_total", worker="1") == 5
    assert metric(merged, "deeplab_batch_size_bucket", le="+Inf") == 4 and metric(merged, "deeplab_queue_depth") == 4
    assert merged.count("# TYPE deeplab_images_total counter") + merged.count("# TYPE deeplab_images counter") == 1


def scrape_until(url: str, done, path: str = "/metrics", timeout_s: float = 60) -> str:
    """The first answer of ``path`` for which ``done`` holds. Server state, polled: each worker
    publishes its series from its own process once a second (PUBLISH_INTERVAL_S), and whichever
    worker answers shows the others' as last published; no event crosses the processes."""
    deadline = time.monotonic() + timeout_s
    while not done(text := httpx.get(f"{url}{path}").text):
        assert time.monotonic() < deadline, f"{path} never added up: {text[-2000:]}"
        time.sleep(PUBLISH_INTERVAL_S / 10)
    return text


def start(*args: str, port: int) -> subprocess.Popen:
    env = {**os.environ, "DEEPLAB_HOST": "127.0.0.1", "DEEPLAB_DEVICE": "cpu", "DEEPLAB_LOG_LEVEL": "warning"}
    return subprocess.Popen(
        [sys.executable, "-m", "service", "--port", str(port), *args],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@contextlib.contextmanager
def workers(*args: str):
    """A real ``python -m service --workers 2 ...`` until the block ends, then SIGTERM: the
    supervisor must exit 0 once every worker has drained."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start("--workers", "2", *args, port=port)
    try:
        wait_ready(proc, url, timeout_s=300)
        yield url
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_two_workers_serve_one_port_report_together_and_drain_on_sigterm():
    grpc_port = free_port()
    with workers("--grpc-port", str(grpc_port), "--max-batch-size", "2") as url:
        image = image_bytes(scene(4, (240, 180)))
        answers = [httpx.post(f"{url}/segment", content=image, headers={"content-type": "image/png"}, timeout=120) for _ in range(16)]
        assert all(r.status_code == 200 for r in answers)
        assert len({r.content for r in answers}) == 1  # the same model in every worker
        # every worker's series, whichever worker answers the scrape (published every second)
        text = scrape_until(url, lambda t: metric(t, "deeplab_requests_total", endpoint="/segment") == 16)
        served = [metric(text, "deeplab_requests_total", endpoint="/segment", worker=str(i)) for i in range(2)]
        assert sum(served) == 16 and min(served) > 0, served  # new connections went to both
        assert metric(text, "deeplab_ready") == 2
        # the web page's panel adds the workers up too
        stats = json.loads(scrape_until(url, lambda t: json.loads(t)["requests_total"] == 16, path="/v1/stats"))
        assert stats["models"][0]["images_total"] == 16
        client = triton.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        assert client.is_server_ready()
        inp = triton.InferInput("IMAGE", [1], "BYTES")
        inp.set_data_from_numpy(np.array([image], dtype=object))
        assert client.infer("deeplabv3plus_r18-d8_camvid-360x480", [inp]).as_numpy("LABELS").shape == (1, 180, 240)


def test_model_control_reaches_every_worker(tmp_path):
    """A load or unload received by one worker is applied by both before it is answered."""
    root = tmp_path / "models"
    for name, seed in (("alpha", 1), ("gamma", 2)):
        save_checkpoint(small_net(seed), root / name / "model.pth")
    (root / "gamma").rename(tmp_path / "gamma")  # dropped into the repository later
    with workers("--enable-model-control", "--model-repository", str(root), "--grpc-port", "0") as url:
        (tmp_path / "gamma").rename(root / "gamma")
        r = httpx.post(f"{url}/v2/repository/models/gamma/load", timeout=300)
        assert r.status_code == 200, r.text
        image = image_bytes(scene(5, (240, 180)))
        answers = [httpx.post(f"{url}/segment", params={"model": "gamma"}, content=image, headers={"content-type": "image/png"}, timeout=120)
                   for _ in range(12)]  # fmt: skip
        assert [a.status_code for a in answers] == [200] * 12 and len({a.content for a in answers}) == 1
        text = scrape_until(url, lambda t: metric(t, "deeplab_images_total", model="gamma") == 12)
        assert all(metric(text, "deeplab_images_total", model="gamma", worker=str(i)) > 0 for i in range(2))  # both serve it
        assert httpx.post(f"{url}/v2/repository/models/alpha/unload", timeout=120).status_code == 200
        gone = [httpx.post(f"{url}/segment", params={"model": "alpha"}, content=image, headers={"content-type": "image/png"}).status_code
                for _ in range(8)]  # fmt: skip
        assert gone == [404] * 8  # on every worker
        r = httpx.post(f"{url}/v2/repository/models/nope/load")
        assert r.status_code == 404 and "failed on workers [0, 1] of 2" in r.json()["error"]


def test_each_worker_gets_its_share_and_with_several_gpus_one_of_them():
    from service.settings import Settings
    from service.workers import worker_settings

    settings = Settings(workers=4, device="cuda", memory_budget_bytes=4000, queue_capacity_pixels=400)
    shares = [worker_settings(settings, i, gpus=2) for i in range(4)]
    assert [s.device for s in shares] == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert {(s.memory_budget_bytes, s.queue_capacity_pixels, s.workers) for s in shares} == {(1000, 100, 4)}
    assert worker_settings(settings, 3, gpus=1).device == "cuda"  # one GPU: every worker on it
    assert worker_settings(Settings(workers=2, device="cuda:1"), 0, gpus=2).device == "cuda:1"  # a chosen GPU stays
