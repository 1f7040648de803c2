"""The numbers of the page's live panel (``GET /v1/stats``), read from the app's own Prometheus
registry: the same series ``/metrics`` exports, so the page needs neither a Prometheus server nor a
parser of the text format, and the panel can never disagree with the dashboards.

Latency quantiles are computed here from the histogram buckets, as Prometheus'
``histogram_quantile`` does (linear within the bucket), over the inference endpoints since start;
rates are left to the browser, which divides the difference of two polls by the time between them.
"""

from __future__ import annotations

import math
from collections import defaultdict

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families


def is_inference(endpoint: str) -> bool:
    """``/segment`` and the Open Inference Protocol's ``.../infer`` routes: what a user calls a request."""
    return endpoint == "/segment" or endpoint.endswith("/infer")


def quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a histogram given as sorted ``(upper bound, cumulative count)`` pairs;
    None when it holds no observation. A rank in the ``+Inf`` bucket gets the largest finite bound."""
    total = buckets[-1][1] if buckets else 0
    if total == 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if math.isinf(upper):
                return lower
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


# A model's fields before its first batch (its counters have no series until they count).
_NO_MODEL_DATA = {"images_total": 0.0, "measured_fps": None, "queue_depth": None, "reference_fps": None, "reference_gpu": None}


def samples_of(registry: CollectorRegistry):
    for family in registry.collect():
        yield from family.samples


def samples_of_text(text: str):
    """The samples of a Prometheus text exposition (every worker's, ``service.workers``)."""
    for family in text_string_to_metric_families(text):
        yield from family.samples


def snapshot(registry_or_samples) -> dict:
    """``{requests_total, latency_p50_s, latency_p99_s, models: [...], gpus: [...]}`` right now, from
    a registry or from samples; a model's counts are summed over the workers that report it."""
    samples = samples_of(registry_or_samples) if isinstance(registry_or_samples, CollectorRegistry) else registry_or_samples
    requests, latency = 0.0, defaultdict(float)
    models: dict[tuple[str, str], dict] = {}
    gpus: dict[str, dict] = {}
    batch_sum, batch_count = defaultdict(float), defaultdict(float)  # per (model, version)
    per_model = {
        "deeplab_images_total": "images_total",
        "deeplab_measured_fps": "measured_fps",
        "deeplab_queue_depth": "queue_depth",
    }
    per_gpu = {
        "deeplab_gpu_utilization_ratio": "utilization",
        "deeplab_gpu_memory_used_bytes": "memory_used_bytes",
        "deeplab_gpu_memory_total_bytes": "memory_total_bytes",
    }
    for name, labels, value, *_ in samples:
        endpoint = labels.get("endpoint", "")
        if name == "deeplab_requests_total" and is_inference(endpoint):
            requests += value
        elif name == "deeplab_request_duration_seconds_bucket" and is_inference(endpoint):
            latency[float(labels["le"])] += value
        elif "model" in labels and (name in per_model or name.startswith(("deeplab_batch_size_", "deeplab_reference_fps"))):
            key = (labels["model"], labels.get("version", ""))
            entry = models.setdefault(key, {"name": key[0], "version": key[1], **_NO_MODEL_DATA})
            if name in per_model:
                entry[per_model[name]] = (entry[per_model[name]] or 0.0) + value
            elif name == "deeplab_reference_fps":
                entry["reference_fps"], entry["reference_gpu"] = value, labels.get("gpu")
            elif name == "deeplab_batch_size_sum":
                batch_sum[key] += value
            elif name == "deeplab_batch_size_count":
                batch_count[key] += value
        elif name in per_gpu and "gpu" in labels:
            gpus.setdefault(labels["gpu"], {"gpu": labels["gpu"]})[per_gpu[name]] = value
    for key, entry in models.items():
        entry["batch_size_mean"] = batch_sum[key] / batch_count[key] if batch_count[key] else None
    buckets = sorted(latency.items())
    return {
        "requests_total": requests,
        "latency_p50_s": quantile(0.5, buckets),
        "latency_p99_s": quantile(0.99, buckets),
        "models": list(models.values()),
        "gpus": [gpus[g] for g in sorted(gpus)],
    }
