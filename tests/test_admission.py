"""Admission from the image header, before decoding: the memory budget in bytes (413 for an image
that can never fit, 503 + Retry-After while the budget is busy), the queue's work bound (429),
the budget's default from the container's limit, and the estimate's shape. Over real HTTP where
the behaviour is the server's; ``deeplab_decoded_images_total`` shows nothing was decoded."""

from __future__ import annotations

import copy
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

from helpers import SCALE, SlowBackend, image_bytes, metric, post, running_server, scene, small_net, wait_for_metric
from model.pipeline.buckets import InputPolicy
from service import admission
from service.admission import MemoryBudget, Admission, estimate
from service.backends.pytorch import TorchBackend
from service.errors import ImageTooLarge, MemoryBusy, QueueFull

MB = 1 << 20
POLICY = InputPolicy(SCALE, (123, 116, 103))


@pytest.fixture(scope="module")
def net():
    return small_net(seed=3)


def metrics_of(url: str) -> str:
    return httpx.get(url + "/metrics").text


def solid_png(width: int, height: int) -> bytes:
    """Tiny upload, huge image: what the pixel limit alone lets through."""
    return image_bytes(np.full((height, width, 3), (40, 160, 90), np.uint8), "PNG")


def test_estimate_grows_with_pixels_and_with_the_formats_buffers():
    size, upload = (4000, 3000), 50_000
    cost = {fmt: estimate(POLICY, "PNG", size, upload, fmt, False, True).peak_bytes for fmt in ("raw", "json", "png", "overlay")}
    pixels = size[0] * size[1]
    assert cost["raw"] == cost["json"] >= admission.DECODE_PIL * pixels  # a PNG's decode is the peak
    assert cost["overlay"] > cost["png"] >= cost["raw"]
    assert cost["overlay"] >= (admission.RGB + admission.LABELS + admission.ENCODE["overlay"]) * pixels
    assert estimate(POLICY, "PNG", (400, 300), upload, "png", False, True).peak_bytes < cost["png"] / 50
    # RLE's lists and text cost per run; a full-size JPEG decode (6 bytes a pixel) is smaller
    plain, rle = (estimate(POLICY, "JPEG", size, upload, "json", with_rle, False).peak_bytes for with_rle in (False, True))
    assert rle > plain
    # the bucket's area is the model work: any image fitting the full box costs the same
    assert estimate(POLICY, "PNG", size, upload, "png", False, True).work == SCALE[0] * SCALE[1]
    assert estimate(POLICY, "PNG", (4000, 500), upload, "png", False, True).work < SCALE[0] * SCALE[1]


def test_large_jpegs_are_estimated_at_their_draft_size_unless_the_overlay_needs_every_pixel():
    size = (6400, 4800)  # 100x the test scale: DCT scaling by 8
    drafted = estimate(POLICY, "JPEG", size, 10_000, "png", False, True)
    full = estimate(POLICY, "JPEG", size, 10_000, "png", False, False)
    overlay = estimate(POLICY, "JPEG", size, 10_000, "overlay", False, True)
    assert drafted.decode_fit == SCALE and full.decode_fit is None and overlay.decode_fit is None
    assert drafted.peak_bytes < full.peak_bytes
    assert estimate(POLICY, "JPEG", (100, 75), 1_000, "png", False, True).decode_fit is None  # < 2x: full decode


def test_reservations_are_counted_once_and_refused_in_order():
    costs = estimate(POLICY, "PNG", (1000, 1000), 0, "png", False, True)
    books = Admission(MemoryBudget(int(costs.peak_bytes * 2.5)), capacity_images=3, capacity_work=10 * costs.work)
    first, second = books.reserve(costs), books.reserve(costs)
    with pytest.raises(MemoryBusy, match="memory budget busy"):
        books.reserve(costs)
    first.leave_queue()
    first.leave_queue()  # the batch retry path may call it again
    assert (books.queued_images, books.queued_work) == (1, costs.work)
    first.release()
    first.release()
    assert books.memory.reserved_bytes == costs.peak_bytes
    with second:
        pass
    assert (books.memory.reserved_bytes, books.queued_images, books.queued_work) == (0, 0, 0)
    with pytest.raises(ImageTooLarge, match="memory budget is"):
        books.reserve(estimate(POLICY, "PNG", (3000, 3000), 0, "png", False, True))
    shared = MemoryBudget(1 << 40)
    narrow = Admission(shared, capacity_images=8, capacity_work=costs.work)
    narrow.reserve(costs)
    with pytest.raises(QueueFull, match="queued work"):
        narrow.reserve(costs)
    other = Admission(shared, capacity_images=8, capacity_work=costs.work)  # another model: its own queue
    other.reserve(costs)
    assert shared.reserved_bytes == 2 * costs.peak_bytes  # one budget for every model


def test_default_budget_is_a_fraction_of_the_cgroup_limit_minus_the_resident_size(tmp_path, monkeypatch):
    v2, v1 = tmp_path / "memory.max", tmp_path / "limit_in_bytes"
    monkeypatch.setattr(admission, "_CGROUP_V2", v2)
    monkeypatch.setattr(admission, "_CGROUP_V1", v1)
    physical = admission.container_memory_limit()  # neither file: the machine's RAM
    v2.write_text("max\n")
    v1.write_text("9223372036854771712\n")  # v1's "no limit"
    assert admission.container_memory_limit() == physical
    v1.write_text(f"{2048 * MB}\n")
    assert admission.container_memory_limit() == min(2048 * MB, physical)
    rss = admission.resident_bytes()
    assert 10 * MB < rss < physical
    limit = min(4 * rss, physical)
    v2.write_text(f"{limit}\n")
    assert admission.container_memory_limit() == limit
    assert abs(admission.default_budget(0.5) - (limit // 2 - rss)) < 64 * MB
    assert admission.default_budget(0.1) == 0  # already over its share: nothing left to reserve


def test_image_over_the_whole_budget_gets_413_before_it_is_decoded(net):
    big = solid_png(3000, 3000)  # 9 Mpx in a few KB: ~90 MB to decode
    with running_server(TorchBackend(net=copy.deepcopy(net)), memory_budget_bytes=40 * MB) as url:
        r = post(url, big, fmt="png")
        assert r.status_code == 413, r.text
        assert r.json()["error"] == "image_too_large" and "memory budget" in r.json()["detail"]
        small = post(url, image_bytes(scene(1)))
        assert small.status_code == 200
        text = metrics_of(url)
        assert metric(text, "deeplab_decoded_images_total") == 1  # only the small one
        assert metric(text, "deeplab_admission_refusals_total", reason="image_too_large") == 1
        assert metric(text, "deeplab_memory_budget_bytes") == 40 * MB
        assert metric(text, "deeplab_memory_reserved_bytes") == 0


def test_busy_budget_gets_503_with_retry_after_before_decoding_and_frees_up_after(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    image = solid_png(1500, 1500)  # ~2.25 Mpx: ~25 MB reserved as png
    with (
        running_server(backend, memory_budget_bytes=40 * MB, max_batch_size=1, max_queue_delay_ms=0) as url,
        ThreadPoolExecutor(1) as pool,
        backend.holding(),
    ):
        held = pool.submit(post, url, image, "png")
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        reserved = metric(metrics_of(url), "deeplab_memory_reserved_bytes")
        assert 20 * MB < reserved <= 40 * MB
        busy = post(url, image, fmt="png")
        assert busy.status_code == 503, busy.text
        assert busy.json()["error"] == "memory_busy" and busy.headers["retry-after"] == "1"
        assert metric(metrics_of(url), "deeplab_decoded_images_total") == 1  # refused from its header
        backend.release.set()
        assert held.result().status_code == 200
        wait_for_metric(url, "deeplab_memory_reserved_bytes", 0, "the first response is sent")
        assert post(url, image, fmt="png").status_code == 200  # the budget is free again
        wait_for_metric(url, "deeplab_memory_reserved_bytes", 0, "the second response is sent")


def test_queued_work_bound_gets_429_from_the_header(net):
    backend = SlowBackend(net=copy.deepcopy(net))
    full_bucket = SCALE[0] * SCALE[1]
    with (
        running_server(backend, queue_capacity_pixels=full_bucket, max_batch_size=1, max_queue_delay_ms=0) as url,
        ThreadPoolExecutor(2) as pool,
        backend.holding(),
    ):
        computing = pool.submit(post, url, image_bytes(scene(1)))
        backend.wait_until(lambda b: b.batches_started == 1, "the first request computes")
        queued = pool.submit(post, url, image_bytes(scene(2)))  # one full bucket: the bound
        wait_for_metric(url, "deeplab_queue_depth", 1, "the second request is queued")
        assert metric(metrics_of(url), "deeplab_queued_work_pixels") == full_bucket
        refused = post(url, image_bytes(scene(3)))
        assert refused.status_code == 429 and refused.json()["error"] == "queue_full", refused.text
        assert "queued work" in refused.json()["detail"]
        assert metric(metrics_of(url), "deeplab_decoded_images_total") == 2
        backend.release.set()
        assert computing.result().status_code == 200 and queued.result().status_code == 200
        wait_for_metric(url, "deeplab_queued_work_pixels", 0, "nothing is queued")


def test_raw_labels_are_streamed_with_their_length(net):
    with running_server(TorchBackend(net=copy.deepcopy(net))) as url:
        r = post(url, solid_png(1200, 900), fmt="raw")
        assert r.status_code == 200
        assert r.headers["content-length"] == str(1200 * 900) and "chunked" not in r.headers.get("transfer-encoding", "")
        labels = np.frombuffer(r.content, np.uint8).reshape(int(r.headers["x-height"]), int(r.headers["x-width"]))
        assert labels.shape == (900, 1200)
        wait_for_metric(url, "deeplab_memory_reserved_bytes", 0, "the response is sent")
