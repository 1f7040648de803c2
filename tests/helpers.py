"""Helpers shared by the tests: paths, realistic random weights, real servers on 127.0.0.1, images.

Tests import these from here, never from each other (conftest keeps only fixtures).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import socket
import subprocess
import struct
import threading
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

from model import DEFAULT_MODEL, build_model, get_config
from service.backends.pytorch import TorchBackend
from service.server import build_server
from service.settings import Settings

REPO = Path(__file__).resolve().parent.parent
CAMVID = Path(os.environ.get("CAMVID_DIR", REPO.parent / "shared" / "data" / "camvid"))


def randomize(state_dict: dict, seed: int = 0) -> dict:
    """Random weights AND random BN statistics, so a wrong layer order or eps cannot hide."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in state_dict.items():
        if not v.is_floating_point():
            out[k] = v.clone()
        elif k.endswith("running_var"):
            out[k] = torch.rand(v.shape, generator=g) + 0.5
        elif k.endswith("running_mean"):
            out[k] = torch.randn(v.shape, generator=g) * 0.2
        else:
            fan_in = v[0].numel() if v.dim() > 1 else 1
            out[k] = torch.randn(v.shape, generator=g) / fan_in**0.5 if v.dim() > 1 else torch.randn(v.shape, generator=g) * 0.2 + (1.0 if k.endswith("weight") else 0.0)
    return out


SCALE = (64, 48)


def small_net(seed: int = 0) -> torch.nn.Module:
    cfg = dataclasses.replace(get_config(DEFAULT_MODEL), test_scale=SCALE)
    net = build_model(cfg)
    net.load_state_dict(randomize(net.state_dict(), seed))
    return net.eval()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready_in_thread(thread: threading.Thread, url: str, path: str = "/readyz", timeout_s: float = 60) -> None:
    """Until the server running in ``thread`` answers ``path`` with 200 (fails if the thread dies
    or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not become ready"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path).status_code == 200:
                return
        time.sleep(0.05)


@contextlib.contextmanager
def running_server(backend, **overrides):
    """A real uvicorn server in a thread; yields its base URL once /readyz is 200. gRPC is off
    unless ``grpc_port`` is given (e.g. ``grpc_port=free_port()``)."""
    overrides = {"grpc_port": 0, **overrides}
    settings = Settings(host="127.0.0.1", port=free_port(), device="cpu", log_level="warning", **overrides)
    server = build_server(settings, backend)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{settings.port}"
    wait_ready_in_thread(thread, url)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(30)


def image_bytes(rgb: np.ndarray, fmt: str = "PNG", **save) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt, **save)
    return buf.getvalue()


def scene(seed: int, size=SCALE) -> np.ndarray:
    """A distinct smooth image: random blobs, so a random network still gives varied labels."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


def metric(text: str, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels`` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        series, value = line.rsplit(" ", 1)
        base, _, label_text = series.partition("{")
        if base == name and all(f'{k}="{v}"' in label_text for k, v in labels.items()):
            total += float(value)
    return total


def wait_for_metric(url: str, name: str, value: float, what: str, timeout_s: float = 30.0, **labels) -> None:
    """Poll the server's /metrics until ``name`` (summed over ``labels``) equals ``value``: the way a
    test waits for server state instead of sleeping."""
    deadline = time.monotonic() + timeout_s
    while (seen := metric(httpx.get(url + "/metrics").text, name, **labels)) != value:
        assert time.monotonic() < deadline, f"timed out waiting until {what} ({name} is {seen}, not {value})"
        time.sleep(0.01)


def post(url: str, data: bytes, fmt: str = "png", content_type="image/png", **params) -> httpx.Response:
    return httpx.post(f"{url}/segment", params={"format": fmt, **params}, content=data, headers={"content-type": content_type}, timeout=60)


def raw_labels(server: str, data: bytes, content_type="image/jpeg") -> np.ndarray:
    """The labels /segment?format=raw gives for ``data``: the reference the protocol must match."""
    r = post(server, data, "raw", content_type)
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, np.uint8).reshape(int(r.headers["x-height"]), int(r.headers["x-width"]))


def labels_of(response: httpx.Response) -> np.ndarray:
    img = Image.open(io.BytesIO(response.content))
    assert img.mode == "P"
    return np.asarray(img)


def png_claiming(width: int, height: int) -> bytes:
    """A tiny valid PNG whose header claims ``width x height`` (CRC fixed up): a bomb's header."""
    data = bytearray(image_bytes(np.zeros((8, 8, 3), np.uint8), "PNG"))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


class SlowBackend(TorchBackend):
    """The torch backend with a gate the test holds: each batch is counted as started, then waits
    in ``infer`` until ``release`` is set, so a test knows exactly which requests are computing
    and which are queued, on any machine. A batch never released within ``RELEASE_WAIT_S`` fails,
    so a broken test cannot hang its server."""

    RELEASE_WAIT_S = 60.0

    def __init__(self, *args, release: threading.Event | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.release = threading.Event() if release is None else release
        self._changed = threading.Condition()
        self.batches_started = 0
        self.images_held = 0  # images inside ``infer`` waiting for ``release``

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self._changed:
            self.batches_started += 1
            self.images_held += len(batch)
            self._changed.notify_all()
        try:
            if not self.release.wait(self.RELEASE_WAIT_S):
                raise RuntimeError("the test never released this batch")
        finally:
            with self._changed:
                self.images_held -= len(batch)
                self._changed.notify_all()
        return super().infer(batch)

    @contextlib.contextmanager
    def holding(self):
        """Hold every batch until ``release`` is set inside the block, or the block ends."""
        self.release.clear()
        try:
            yield self
        finally:
            self.release.set()

    def wait_until(self, condition, what: str, timeout_s: float = 30.0) -> None:
        """Block until ``condition(self)`` holds (checked whenever a batch starts or is released)."""
        with self._changed:
            assert self._changed.wait_for(lambda: condition(self), timeout_s), f"timed out waiting until {what}"

    def warm_up(self, shapes, tune=True) -> None:  # start-up is not held
        for n, h, w in shapes:
            super().infer(np.zeros((n, h, w, 3), np.uint8))


def wait_ready(proc: subprocess.Popen, url: str, timeout_s: float = 120) -> None:
    """Until the server process at ``url`` answers /readyz 200 (fails if it dies or the deadline passes)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(url + "/readyz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not become ready")
