"""Every Prometheus metric the service exports, defined in one place (``deeplab_`` prefix).

Each app gets its own ``CollectorRegistry`` (no process-global state), so tests can run several
apps side by side. Gauges that mirror live state (queue depth, fps) are computed at scrape time
from callbacks instead of being pushed, so they can never go stale. Series about one served model
carry the labels ``model`` and ``version`` (as Triton's do); ``ModelMetrics`` is that model's view,
and unloading the model removes its series.

Beside the service's own series the registry holds the GPUs' (``service.gpu_metrics``, none without
a GPU) and the process's (prometheus-client's ``process_*`` and ``python_info``). No ``_created``
series: prometheus-client only offers turning them off process-wide, which this module does on
import; they double the series of every counter and histogram and no dashboard reads them.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from model.configs import DEFAULT_MODEL
from service.gpu_metrics import GpuCollector

disable_created_metrics()

# 1 ms .. 10 s, roughly x2 per step: resolves a fast GPU batch and a slow CPU request alike.
# Fine between 50 and 400 ms, where a GPU service's latency objectives sit (p99 <= 150 ms, say).
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256)


class RateMeter:
    """Events per second over a sliding window; thread-safe (fed by the batcher, read by scrapes)."""

    def __init__(self, window_s: float = 10.0):
        self.window_s = window_s
        self._events: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def add(self, n: int, now: float | None = None) -> None:
        with self._lock:
            self._events.append((time.monotonic() if now is None else now, n))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            while self._events and self._events[0][0] < now - self.window_s:
                self._events.popleft()
            return sum(n for _, n in self._events) / self.window_s


MODEL_LABELS = ("model", "version")


@dataclass(frozen=True)
class MeasuredReference:
    """Our own fps figure for a config the seed table has no row for."""

    fps: float
    gpu: str
    result_file: str  # under bench/results/ (tests/test_metrics.py checks the figure against it)
    test_scale: tuple[int, int]  # the inference size it was measured at: another size is another cost


# The built-in model's reference: `bench.model_bench` at batch 1, torch fp16 with CUDA graphs on
# one H200, at its 480x360 inference size (service/README.md "Metrics"), so "measured vs
# reference fps" is never empty for it.
MEASURED_REFERENCE = {DEFAULT_MODEL: MeasuredReference(1519.72, "H200", "model_bench_h200_built_in_480x360.json", (480, 360))}


def reference_fps(cfg) -> tuple[float, str, str] | None:
    """``(fps, gpu, source)`` for a config: the seed table's row, else our measurement at the same
    inference size, else None."""
    zoo = cfg.zoo
    if zoo is not None and zoo.fps is not None:
        return zoo.fps, zoo.fps_gpu or "unknown", "seed_table"
    measured = MEASURED_REFERENCE.get(cfg.name)
    if measured is None or tuple(cfg.test_scale) != measured.test_scale:
        return None
    return measured.fps, measured.gpu, "measured"


class ServiceMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r, m = self.registry, MODEL_LABELS
        r.register(GpuCollector())
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        PlatformCollector(registry=r)  # python_info
        self.requests = Counter(
            "deeplab_requests", "HTTP requests by endpoint and status code", ["endpoint", "code"], registry=r
        )
        self.request_duration = Histogram(
            "deeplab_request_duration_seconds", "Request latency, receive to response", ["endpoint"],
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inflight = Gauge("deeplab_inflight_requests", "HTTP requests being handled", registry=r)
        self.ready = Gauge("deeplab_ready", "1 when the start-up models are loaded, warmed up and not draining", registry=r)
        self.memory_budget = Gauge("deeplab_memory_budget_bytes", "Bytes the requests in flight may reserve", registry=r)
        self.memory_reserved = Gauge(
            "deeplab_memory_reserved_bytes", "Estimated peak bytes reserved by the requests in flight", registry=r
        )
        # per served model
        self.queue_wait = Histogram(
            "deeplab_queue_wait_seconds", "Time an image waited in the batching queue", m,
            buckets=LATENCY_BUCKETS, registry=r,
        )
        self.inference_duration = Histogram(
            "deeplab_inference_duration_seconds", "Backend time per batch", m, buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram("deeplab_batch_size", "Images per batch", m, buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("deeplab_queue_depth", "Images waiting in the batching queue", m, registry=r)
        self.images = Counter("deeplab_images", "Images segmented", m, registry=r)
        self.measured_fps = Gauge("deeplab_measured_fps", "Images segmented per second over the last 10 s", m, registry=r)
        self.reference_fps = Gauge(
            "deeplab_reference_fps", "Reference fps for the served config: the seed table's (mmseg model zoo, "
            "source=seed_table), else our own measurement (source=measured)",
            [*m, "config", "gpu", "source"], registry=r,
        )
        self.model_info = Gauge(
            "deeplab_model_info", "Served model (value is always 1)",
            [*m, "config", "backend", "device", "precision"], registry=r,
        )
        self.queued_work = Gauge(
            "deeplab_queued_work_pixels", "Model input pixels of the images decoding or queued", m, registry=r
        )
        self.decoded = Counter("deeplab_decoded_images", "Images decoded (admitted past the header)", m, registry=r)
        self.refused = Counter(
            "deeplab_admission_refusals", "Requests refused from the image header, before decoding",
            [*m, "reason"], registry=r,
        )

    def track_memory(self, budget) -> None:
        """The shared budget and its reserved bytes, read from ``service.admission.MemoryBudget``."""
        self.memory_budget.set_function(lambda: budget.budget_bytes)
        self.memory_reserved.set_function(lambda: budget.reserved_bytes)

    def for_model(self, name: str, version: str) -> ModelMetrics:
        return ModelMetrics(self, (name, version))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ModelMetrics:
    """One served model's series; ``remove`` drops them all when it is unloaded."""

    def __init__(self, metrics: ServiceMetrics, labels: tuple[str, str]):
        self.parent, self.labels = metrics, labels
        self.queue_wait = metrics.queue_wait.labels(*labels)
        self.decoded = metrics.decoded.labels(*labels)
        self.fps_meter = RateMeter()
        metrics.measured_fps.labels(*labels).set_function(self.fps_meter.rate)
        self._extra: list[tuple] = []  # (metric, label values) created beyond the model's own

    def _child(self, metric, *values: str):
        key = (*self.labels, *values)
        if (metric, key) not in self._extra:
            self._extra.append((metric, key))
        return metric.labels(*key)

    def refuse(self, reason: str) -> None:
        self._child(self.parent.refused, reason).inc()

    def track(self, depth: Callable[[], float], admission) -> None:
        """Queue depth and queued work read from the batcher and ``Admission`` at scrape time."""
        self.parent.queue_depth.labels(*self.labels).set_function(depth)
        self.parent.queued_work.labels(*self.labels).set_function(lambda: admission.queued_work)

    def describe(self, cfg, backend: str, device: str, precision: str) -> None:
        self._child(self.parent.model_info, cfg.name, backend, device, precision).set(1)
        reference = reference_fps(cfg)
        if reference is not None:
            fps, gpu, source = reference
            self._child(self.parent.reference_fps, cfg.name, gpu, source).set(fps)

    def observe_batch(self, size: int, inference_s: float) -> None:
        p = self.parent
        p.batch_size.labels(*self.labels).observe(size)
        p.inference_duration.labels(*self.labels).observe(inference_s)
        p.images.labels(*self.labels).inc(size)
        self.fps_meter.add(size)

    def remove(self) -> None:
        p = self.parent
        for metric in (p.queue_wait, p.inference_duration, p.batch_size, p.queue_depth, p.images, p.measured_fps, p.queued_work, p.decoded):
            with contextlib.suppress(KeyError):
                metric.remove(*self.labels)
        for metric, key in self._extra:
            with contextlib.suppress(KeyError):
                metric.remove(*key)
