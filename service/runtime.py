"""The segmentation pipeline behind /segment, independent of HTTP.

The HTTP layer talks to it through ``admit`` (readiness, capacity, in-flight counting for the
drain), ``segment``, ``encode`` and ``describe`` only. Start-up loads the backend and warms it up in worker threads (so /healthz answers meanwhile), then
starts the batcher. Per request: decode + resize/pad in the decode pool (which also
hands the pixels to the backend's `stage`, e.g. to start the GPU upload), wait for a batch on the
inference thread, crop/resize the labels back in the decode pool. The event loop only routes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model.pipeline.buckets import InputPolicy, Prepared
from model.pipeline.decode import decode
from model.pipeline.restore import restore_labels
from service.backends import Backend, create_backend
from service.batcher import Batcher, Outcome
from service.errors import NotReady
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("service")


@dataclass(frozen=True)
class Segmentation:
    rgb: np.ndarray  # the decoded image (for overlays)
    labels: np.ndarray  # H x W uint8 class indices at the original size
    outcome: Outcome  # batch size and timings


class Runtime:
    def __init__(self, settings: Settings, metrics: ServiceMetrics, backend: Backend | None = None):
        self.settings = settings
        self.metrics = metrics
        self.lifecycle = Lifecycle()
        self.backend = backend or create_backend(
            settings.model, settings.backend, settings.device, settings.precision, cuda_graphs=settings.cuda_graphs
        )
        self.pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="codec")
        self.config = None
        self.policy: InputPolicy | None = None
        self.batcher: Batcher | None = None
        self.start_error: Exception | None = None  # set by the app when ``start`` failed

    def warm_up_shapes(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """``(tuned, untuned)`` batch shapes to warm up. On CUDA, kernels and graphs are specialised
        per shape, so every batch size of the main buckets is warmed with cuDNN's per-shape tuning
        (slow) and the rare buckets without it (fast, and nearly as quick to run: bench/RESULTS.md)."""
        on_cuda = str(self.backend.device).startswith("cuda")
        return self.policy.warm_up_shapes(self.settings.max_batch_size, per_batch_size=on_cuda)

    async def start(self) -> None:
        s = self.settings
        started = time.perf_counter()
        self.config = await asyncio.to_thread(self.backend.load)
        loaded = time.perf_counter()
        self.policy = InputPolicy.for_config(self.config)
        tuned, untuned = self.warm_up_shapes()
        log.info("warming up", extra={"shapes": len(tuned) + len(untuned), "backend": self.backend.name})
        await asyncio.to_thread(self.backend.warm_up, tuned)
        await asyncio.to_thread(self.backend.warm_up, untuned, False)
        self.batcher = Batcher(
            self._run_batch,
            max_batch_size=s.max_batch_size,
            max_delay_s=s.max_queue_delay_ms / 1000,
            capacity=s.queue_capacity,
            timeout_s=s.request_timeout_s,
            on_batch=self.metrics.observe_batch,
            concurrency=self.backend.concurrent_batches,
        )
        self.batcher.start()
        self.metrics.track_queue(lambda: self.batcher.depth)
        self.metrics.describe_model(self.config, self.backend.name, str(self.backend.device), self.backend.precision.value)
        self.lifecycle.loaded = True
        self.metrics.ready.set(1)
        log.info("ready", extra={
            "config": self.config.name, "backend": self.backend.name, "device": str(self.backend.device),
            "precision": self.backend.precision.value,
            "load_s": round(loaded - started, 2), "warm_up_s": round(time.perf_counter() - loaded, 2),
        })  # fmt: skip

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        self.pool.shutdown(wait=True)

    @property
    def state(self) -> str:
        """``loading``, ``ready`` or ``draining``."""
        return self.lifecycle.state

    def require_ready(self) -> None:
        """Raise ``NotReady`` unless loaded, warmed up and not draining."""
        self.lifecycle.require_ready()

    @contextlib.asynccontextmanager
    async def admit(self) -> AsyncIterator[None]:
        """One /segment request's stay: refused with ``NotReady`` while loading or draining and with
        ``QueueFull`` when the queue is at capacity (before the caller reads the upload, so
        shedding load costs nothing), then counted in flight until the block exits; the drain
        waits for that count to reach zero."""
        self.lifecycle.require_ready()
        self.batcher.check_capacity()
        self.lifecycle.enter()
        try:
            yield
        finally:
            self.lifecycle.leave()

    @property
    def in_flight(self) -> int:
        return self.lifecycle.active

    @property
    def draining(self) -> bool:
        return self.lifecycle.draining

    def begin_drain(self) -> None:
        """Stop admitting (plain attribute writes: safe inside a signal handler)."""
        self.lifecycle.draining = True
        self.metrics.ready.set(0)

    async def wait_idle(self, timeout_s: float) -> bool:
        """After ``begin_drain``: wait until no admitted request is left; False on timeout."""
        return await self.lifecycle.wait_idle(timeout_s)

    def _run_batch(self, staged: list) -> list[np.ndarray]:
        return list(self.backend.infer_images(staged))

    def _decode(self, data: bytes) -> tuple[np.ndarray, Prepared, object]:
        """Decode, resize/pad to the bucket, and hand the pixels to the backend's ``stage``."""
        rgb = decode(data, self.settings.max_image_pixels)
        prepared = self.policy.prepare(rgb)
        return rgb, prepared, self.backend.stage(prepared.pixels)

    async def segment(self, data: bytes) -> Segmentation:
        loop = asyncio.get_running_loop()
        rgb, prepared, staged = await loop.run_in_executor(self.pool, self._decode, data)
        outcome = await self.batcher.submit(prepared.bucket, staged)
        self.metrics.queue_wait.observe(outcome.queue_s)
        labels = await loop.run_in_executor(self.pool, restore_labels, outcome.value, prepared)
        return Segmentation(rgb, labels, outcome)

    async def encode(self, fn, *args) -> bytes:
        """Run a CPU-heavy encoding step in the codec pool, off the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def describe(self) -> dict:
        """What /v1/models publishes: only facts a client may see (no checkpoint meta verbatim:
        it can hold the training command and data paths, see ``backends.provenance``)."""
        if not self.lifecycle.loaded:
            raise NotReady("model is still loading")
        cfg, s, zoo = self.config, self.settings, self.config.zoo
        return {
            "config": cfg.name,
            "dataset": cfg.dataset.name,
            "classes": list(cfg.dataset.classes),
            "palette": [list(p) for p in cfg.dataset.palette],
            "input_policy": {
                "resize": "keep aspect ratio to fit test_scale (mmseg Resize(scale, keep_ratio=True))",
                "test_scale": list(cfg.test_scale),
                "pad_to_bucket_step": self.policy.step,
                "buckets": [list(b) for b in self.policy.all_buckets()],
                "pad_value_rgb": list(self.policy.pad_rgb),
                "mean": list(cfg.mean),
                "std": list(cfg.std),
                "inference": cfg.inference,
                "output": "labels at the original size (nearest-neighbour from the test scale)",
            },
            "backend": self.backend.name,
            "device": str(self.backend.device),
            "precision": self.backend.precision.value,
            "weights": self.backend.provenance,
            "backend_details": self.backend.describe(),
            "batching": {
                "max_batch_size": s.max_batch_size,
                "max_queue_delay_ms": s.max_queue_delay_ms,
                "queue_capacity": s.queue_capacity,
                "request_timeout_s": s.request_timeout_s,
            },
            "reference": None
            if zoo is None
            else {"miou": zoo.miou, "miou_ms_flip": zoo.miou_ms_flip, "fps": zoo.fps, "fps_gpu": zoo.fps_gpu, "dataset": zoo.dataset_label},
        }
