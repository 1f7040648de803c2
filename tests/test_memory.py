"""The memory budget holds for real: the process's peak resident size (VmHWM, reset before each
scenario through /proc/self/clear_refs) stays under its size before + the configured budget while
the "big but small" PNG (6320x6320 of one colour, ~100 KB, under the 40 Mpx limit) is answered as
png, json and overlay, and while 4 worst-case overlays arrive at once. And JPEG draft decoding
(the decode at about the model's size) keeps the labels of a large photo nearly identical."""

from __future__ import annotations

import gc
import io
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from helpers import image_bytes, labels_of, post, running_server, small_net, wait_for_metric
from service.backends.pytorch import TorchBackend

MB = 1 << 20
BUDGET = 600 * MB  # one worst-case 40 Mpx request fits, two overlays do not
SIDE = 6320


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


class PeakRSS:
    """The growth of this process's peak resident size over the block (the server runs in it)."""

    def __enter__(self):
        gc.collect()
        self.before = _status("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        return self

    def __exit__(self, *exc):
        self.growth = _status("VmHWM") - self.before


@pytest.fixture(scope="module")
def big_png() -> bytes:
    data = image_bytes(np.full((SIDE, SIDE, 3), (40, 160, 90), np.uint8), "PNG")
    assert len(data) < 200_000 and SIDE * SIDE <= 40_000_000
    return data


@pytest.fixture(scope="module")
def server():
    with running_server(TorchBackend(net=small_net(seed=4)), memory_budget_bytes=BUDGET, max_batch_size=1) as url:
        yield url


def _refused_clearly(r: httpx.Response) -> bool:
    return r.status_code in (413, 503) and set(r.json()) == {"error", "detail"}


def test_big_but_small_png_is_answered_in_every_format_within_the_budget(server, big_png):
    for fmt in ("png", "json", "overlay"):
        with PeakRSS() as peak:
            r = post(server, big_png, fmt=fmt)
        assert r.status_code == 200 or _refused_clearly(r), r.text
        assert peak.growth < BUDGET, f"{fmt}: peak grew {peak.growth / MB:.0f} MB over a {BUDGET / MB:.0f} MB budget"
        if fmt == "png":
            assert labels_of(r).shape == (SIDE, SIDE)
        elif fmt == "json":
            assert (r.json()["width"], r.json()["height"]) == (SIDE, SIDE)
        else:
            assert Image.open(io.BytesIO(r.content)).size == (SIDE, SIDE)
        wait_for_metric(server, "deeplab_memory_reserved_bytes", 0, f"the {fmt} response is sent")


def test_four_concurrent_worst_case_overlays_stay_within_the_budget(server, big_png):
    with PeakRSS() as peak, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: post(server, big_png, fmt="overlay"), range(4)))
    codes = sorted(r.status_code for r in answers)
    assert all(r.status_code == 200 or _refused_clearly(r) for r in answers), codes
    assert 200 in codes, codes
    assert all(r.json()["error"] == "memory_busy" and r.headers["retry-after"] == "1" for r in answers if r.status_code == 503)
    assert peak.growth < BUDGET, f"peak grew {peak.growth / MB:.0f} MB over a {BUDGET / MB:.0f} MB budget ({codes})"
    wait_for_metric(server, "deeplab_memory_reserved_bytes", 0, "every response is sent")


def test_jpeg_draft_decoding_keeps_the_labels_of_a_large_photo(camvid_dir):
    """A CamVid photo upscaled 8x (3840x2880) through the built-in model, decoded in full vs
    straight to the test scale by libjpeg's DCT scaling."""
    photo = Image.open(sorted((camvid_dir / "images" / "val").glob("*.jpg"))[0]).convert("RGB")
    buf = io.BytesIO()
    photo.resize((photo.width * 8, photo.height * 8), Image.BICUBIC).save(buf, "JPEG", quality=92)
    labels = {}
    for draft in (False, True):
        with running_server(TorchBackend(None), jpeg_draft_decode=draft) as url:
            r = post(url, buf.getvalue(), fmt="raw", content_type="image/jpeg")
            assert r.status_code == 200, r.text
            labels[draft] = np.frombuffer(r.content, np.uint8).reshape(int(r.headers["x-height"]), int(r.headers["x-width"]))
    assert labels[True].shape == labels[False].shape == (photo.height * 8, photo.width * 8)
    agreement = float((labels[True] == labels[False]).mean())
    print(f"draft vs full decode: {agreement:.4%} of pixels agree")
    assert agreement > 0.98
