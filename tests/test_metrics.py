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
    m.describe_model(get_config(DEFAULT_MODEL), "torch", "cpu", "fp32")
    m.requests.labels("/segment", "200").inc()
    m.request_duration.labels("/segment").observe(0.01)
    m.queue_wait.observe(0.002)
    m.observe_batch(3, 0.05)
    m.track_queue(lambda: 7)
    text = m.render().decode()
    for name in (
        "deeplab_requests_total", "deeplab_request_duration_seconds_bucket", "deeplab_queue_wait_seconds_bucket",
        "deeplab_inference_duration_seconds_bucket", "deeplab_batch_size_bucket", "deeplab_queue_depth",
        "deeplab_inflight_requests", "deeplab_images_total", "deeplab_measured_fps", "deeplab_model_info", "deeplab_ready",
    ):
        assert f"\n{name}" in text, name
    assert metric(text, "deeplab_queue_depth") == 7
    assert metric(text, "deeplab_images_total") == 3
    assert metric(text, "deeplab_batch_size_sum") == 3
    assert metric(text, "deeplab_measured_fps") == 0.3  # 3 images in a 10 s window
    assert metric(text, "deeplab_model_info", config=DEFAULT_MODEL, backend="torch") == 1
    assert "deeplab_reference_fps{" not in text  # the CamVid config has no seed-table row


def test_reference_fps_comes_from_the_seed_table():
    cfg = get_config(CITYSCAPES_R18)
    m = ServiceMetrics()
    m.describe_model(cfg, "tensorrt", "cuda", "fp16")
    text = m.render().decode()
    assert metric(text, "deeplab_reference_fps", config=CITYSCAPES_R18, gpu="V100") == cfg.zoo.fps == 14.27


def test_each_app_has_its_own_registry():
    a, b = ServiceMetrics(), ServiceMetrics()
    a.images.inc(5)
    assert metric(b.render().decode(), "deeplab_images_total") == 0
