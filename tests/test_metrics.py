"""The Prometheus metrics module: names, labels, the seed table's reference, the fps meter."""

from __future__ import annotations

from model import DEFAULT_MODEL, get_config
from service.metrics import RateMeter, ServiceMetrics
from helpers import metric

CITYSCAPES_R18 = "deeplabv3plus_r18-d8_4xb2-80k_cityscapes-512x1024"


def test_rate_meter_counts_a_sliding_window():
    meter = RateMeter(window_s=10)
    meter.add(30, now=100.0)
    meter.add(20, now=105.0)
    assert meter.rate(now=106.0) == 5.0
    assert meter.rate(now=112.0) == 2.0  # the first 30 have left the window
    assert meter.rate(now=200.0) == 0.0


def test_every_contract_metric_is_exported_with_the_deeplab_prefix():
    m = ServiceMetrics()
    model = m.for_model("camvid", "1")
    model.describe(get_config(DEFAULT_MODEL), "torch", "cpu", "fp32")
    m.requests.labels("/segment", "200").inc()
    m.request_duration.labels("/segment").observe(0.01)
    model.queue_wait.observe(0.002)
    model.observe_batch(3, 0.05)
    model.track(lambda: 7, type("Books", (), {"queued_work": 12})())
    text = m.render().decode()
    for name in (
        "deeplab_requests_total", "deeplab_request_duration_seconds_bucket", "deeplab_queue_wait_seconds_bucket",
        "deeplab_inference_duration_seconds_bucket", "deeplab_batch_size_bucket", "deeplab_queue_depth",
        "deeplab_inflight_requests", "deeplab_images_total", "deeplab_measured_fps", "deeplab_model_info", "deeplab_ready",
    ):
        assert f"\n{name}" in text, name
    labels = {"model": "camvid", "version": "1"}
    assert metric(text, "deeplab_queue_depth", **labels) == 7
    assert metric(text, "deeplab_queued_work_pixels", **labels) == 12
    assert metric(text, "deeplab_images_total", **labels) == 3
    assert metric(text, "deeplab_batch_size_sum", **labels) == 3
    assert metric(text, "deeplab_measured_fps", **labels) == 0.3  # 3 images in a 10 s window
    assert metric(text, "deeplab_model_info", **labels, config=DEFAULT_MODEL, backend="torch") == 1
    assert "deeplab_reference_fps{" not in text  # the CamVid config has no seed-table row


def test_each_models_series_go_when_it_is_unloaded():
    m = ServiceMetrics()
    kept, gone = m.for_model("kept", "1"), m.for_model("gone", "2")
    for model in (kept, gone):
        model.describe(get_config(CITYSCAPES_R18), "torch", "cpu", "fp32")
        model.observe_batch(2, 0.01)
        model.refuse("queue_full")
    gone.remove()
    text = m.render().decode()
    assert 'model="gone"' not in text
    assert metric(text, "deeplab_images_total", model="kept") == 2
    assert metric(text, "deeplab_admission_refusals_total", model="kept", reason="queue_full") == 1
    assert metric(text, "deeplab_reference_fps", model="kept", config=CITYSCAPES_R18) == 14.27


def test_reference_fps_comes_from_the_seed_table():
    cfg = get_config(CITYSCAPES_R18)
    m = ServiceMetrics()
    m.for_model("city", "1").describe(cfg, "tensorrt", "cuda", "fp16")
    text = m.render().decode()
    assert metric(text, "deeplab_reference_fps", config=CITYSCAPES_R18, gpu="V100") == cfg.zoo.fps == 14.27


def test_each_app_has_its_own_registry():
    a, b = ServiceMetrics(), ServiceMetrics()
    a.for_model("camvid", "1").observe_batch(5, 0.01)
    assert metric(b.render().decode(), "deeplab_images_total") == 0
