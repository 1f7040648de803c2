"""The Prometheus metrics module: names, labels, the reference fps (seed table or our own
measurement), the fps meter, process series and no ``_created`` series."""

from __future__ import annotations

import dataclasses
import json
import subprocess

import httpx
from deploy_support import require_tool

from model import DEFAULT_MODEL, get_config, load_model
from service.backends.pytorch import TorchBackend
from service.gpu_metrics import load_nvml
from service.metrics import MEASURED_REFERENCE, RateMeter, ServiceMetrics, reference_fps
from helpers import REPO, image_bytes, metric, post, running_server, scene, small_net

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
    model.describe(load_model().config, "torch", "cpu", "fp32")
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
    # the CamVid config has no seed-table row: its reference is our own measurement
    assert metric(text, "deeplab_reference_fps", **labels, config=DEFAULT_MODEL, gpu="H200", source="measured") == 1519.72


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
    assert metric(text, "deeplab_reference_fps", config=CITYSCAPES_R18, gpu="V100", source="seed_table") == cfg.zoo.fps == 14.27
    assert 'source="measured"' not in text  # a seed-table row is never overridden


def test_the_measured_reference_holds_only_at_the_size_it_was_measured_at():
    served = load_model().config
    assert reference_fps(served) == (1519.72, "H200", "measured")
    assert reference_fps(dataclasses.replace(served, test_scale=(840, 630))) is None  # --test-scale 840x630: no figure


def test_the_measured_reference_is_the_committed_measurement():
    """Each config's own reference equals the batch-1 figure of the bench result it names, measured
    on that config and that GPU (so the number in service/metrics.py cannot drift from its source)."""
    assert DEFAULT_MODEL in MEASURED_REFERENCE
    for config, ref in MEASURED_REFERENCE.items():
        result = json.loads((REPO / "bench" / "results" / ref.result_file).read_text())
        assert result["benchmark"] == "model_bench" and result["config"] == config and result["device"].startswith("cuda")
        assert ref.gpu in result["hardware"]
        (row,) = [r for r in result["rows"] if r["batch_size"] == 1]
        assert row["images_per_s"] == ref.fps and tuple(result["input_wh"]) == ref.test_scale
        assert get_config(config).zoo is None or get_config(config).zoo.fps is None, "the seed table has a reference"


def test_no_created_series_and_process_series_present():
    m = ServiceMetrics()
    m.for_model("camvid", "1").observe_batch(2, 0.01)
    m.requests.labels("/segment", "200").inc()
    text = m.render().decode()
    assert "_created" not in text
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"):
        assert metric(text, name) > 0, name
    assert "\npython_info{" in text


def test_each_app_has_its_own_registry():
    a, b = ServiceMetrics(), ServiceMetrics()
    a.for_model("camvid", "1").observe_batch(5, 0.01)
    assert metric(b.render().decode(), "deeplab_images_total") == 0


def test_a_served_metrics_page_passes_promtool():
    """The real app's /metrics after a request: promtool's checks pass, GPU series exactly when NVML
    sees a GPU (none on a CPU machine, and no error), process series, no ``_created``, and the
    built-in model's reference fps."""
    net = small_net()
    net.config = dataclasses.replace(net.config, test_scale=MEASURED_REFERENCE[DEFAULT_MODEL].test_scale)  # the built-in's size
    with running_server(TorchBackend(net=net)) as url:
        assert post(url, image_bytes(scene(0))).status_code == 200
        text = httpx.get(url + "/metrics").text
    proc = subprocess.run([require_tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    nvml = load_nvml()
    if nvml is None:
        assert "deeplab_gpu_" not in text  # not even a HELP line
    else:
        assert metric(text, "deeplab_gpu_info") == nvml.nvmlDeviceGetCount()
    assert "_created" not in text
    assert metric(text, "process_resident_memory_bytes") > 0 and metric(text, "process_cpu_seconds_total") > 0
    assert metric(text, "deeplab_reference_fps", model=DEFAULT_MODEL, source="measured") == MEASURED_REFERENCE[DEFAULT_MODEL].fps
