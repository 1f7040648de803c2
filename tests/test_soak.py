"""Soak (issue 18): thousands of requests against a real server process, whose memory must stay
flat once warmed up, with no errors. A leak of a few KB per request (a cached buffer, a future
kept alive, a growing dict) shows up here as a steady climb of the server's resident set.

The server is a subprocess so its RSS is its own (not the test client's); images are tiny so the
run stays short on a loaded 2-core CI machine."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from statistics import mean

import httpx

from helpers import REPO, free_port, image_bytes, metric, scene, wait_ready

SERVER = """
import sys
sys.path.insert(0, "tests")
from service.backends.pytorch import TorchBackend
from service.server import serve
from service.settings import Settings
from helpers import small_net
serve(Settings(), TorchBackend(net=small_net()))
"""

WARM_UP_ROUNDS, ROUNDS, PER_ROUND, CLIENTS = 4, 20, 100, 4  # 2,000 measured requests
TOLERANCE = 0.05  # the last quarter's RSS within +-5% of the first quarter's


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        kb = next(line for line in status if line.startswith("VmRSS:")).split()[1]
    return int(kb) * 1024


def request_mix() -> list[tuple[bytes, str, str]]:
    """Small images (four shapes, two codecs) crossed with all four response formats."""
    images = [
        (image_bytes(scene(seed, size), fmt), f"image/{fmt.lower()}")
        for seed, size, fmt in [(0, (64, 48), "PNG"), (1, (48, 64), "PNG"), (2, (40, 48), "JPEG"), (3, (64, 32), "JPEG")]
    ]
    formats = ["png", "raw", "json", "overlay"]
    return [(body, ctype, fmt) for (body, ctype) in images for fmt in formats]


def test_memory_stays_flat_over_thousands_of_requests():
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DEEPLAB_HOST": "127.0.0.1", "DEEPLAB_PORT": str(port), "DEEPLAB_DEVICE": "cpu", "DEEPLAB_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(proc, url)
        mix = request_mix()
        clients = [httpx.Client(base_url=url, timeout=60) for _ in range(CLIENTS)]

        def send(n: int) -> int:
            body, ctype, fmt = mix[n % len(mix)]
            response = clients[n % CLIENTS].post("/segment", params={"format": fmt}, content=body, headers={"content-type": ctype})
            return response.status_code

        started = time.monotonic()
        samples, codes = [], []
        with ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(WARM_UP_ROUNDS + ROUNDS):
                codes += pool.map(send, range(PER_ROUND))
                samples.append(rss_bytes(proc.pid))
        elapsed = time.monotonic() - started
        for client in clients:
            client.close()
        served = metric(httpx.get(url + "/metrics").text, "deeplab_requests_total", endpoint="/segment", code="200")
    finally:
        proc.kill()
        proc.wait()
    total = (WARM_UP_ROUNDS + ROUNDS) * PER_ROUND
    assert codes == [200] * total and served == total
    measured = samples[WARM_UP_ROUNDS:]
    quarter = len(measured) // 4
    first, last = mean(measured[:quarter]), mean(measured[-quarter:])
    print(f"soak: {total} requests in {elapsed:.1f} s; RSS first quarter {first / 2**20:.1f} MiB, last {last / 2**20:.1f} MiB")
    assert abs(last / first - 1) <= TOLERANCE, f"RSS went from {first / 2**20:.1f} to {last / 2**20:.1f} MiB"
