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
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from model.pipeline.buckets import InputPolicy, Prepared
from model.pipeline.decode import decode_scaled, probe
from model.pipeline.restore import restore_labels
from service.admission import Admission, Reservation, default_budget, estimate
from service.backends import Backend, create_backend
from service.batcher import Batcher, Outcome
from service.errors import NotReady
from service.lifecycle import Lifecycle
from service.metrics import ServiceMetrics
from service.settings import Settings

log = logging.getLogger("service")


@dataclass(frozen=True)
class Segmentation:
    rgb: np.ndarray | None  # the decoded image, kept for overlays only
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
        self.admission: Admission | None = None
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
        self.admission = self._admission()
        self.metrics.track_admission(self.admission)
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
        self.admission.check_room()
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

    async def drain(self, timeout_s: float) -> bool:
        """After ``begin_drain``: refuse at once (503 + Retry-After) the queued work that cannot
        finish within ``timeout_s``, let the rest finish, and when the window closes refuse what is
        still queued, so the server can exit in time. True if everything finished."""
        if self.batcher is not None:
            self.batcher.drain(timeout_s)
        if await self.lifecycle.wait_idle(timeout_s):
            return True
        if self.batcher is not None:
            log.warning("drain window closed", extra={"refused": self.batcher.refuse_queued(), "active": self.in_flight})
        return False

    def _admission(self) -> Admission:
        """The budget (after warm-up, so the baseline includes the model) and the queue's bounds."""
        s = self.settings
        budget = s.memory_budget_bytes or default_budget(s.memory_budget_fraction)
        full = max(w * h for w, h in self.policy.full_buckets())
        work = s.queue_capacity_pixels or s.queue_capacity * full
        log.info("admission", extra={"memory_budget_bytes": budget, "queue_capacity": s.queue_capacity, "queue_capacity_pixels": work})
        if budget < 64 << 20:
            log.warning("memory budget under 64 MB: large images will get 413; raise the memory limit or set memory_budget_bytes")
        return Admission(budget, s.queue_capacity, work)

    def reserve(self, data: bytes, output: str, rle: bool = False) -> Reservation:
        """Read the image header and reserve the request's estimated peak memory and model work,
        before anything is decoded: 413 / 415 / 400 for the header, 413 if it can never fit the
        budget, 429 if the queue is full, 503 if the budget is busy. Release it when answered."""
        fmt, width, height = probe(data, self.settings.max_image_pixels)
        cost = estimate(self.policy, fmt, (width, height), len(data), output, rle, self.settings.jpeg_draft_decode)
        try:
            return self.admission.reserve(cost)
        except Exception as exc:
            self.metrics.refused.labels(getattr(exc, "code", "error")).inc()
            raise

    def _run_batch(self, items: list[tuple[Reservation, object]]) -> list[np.ndarray]:
        for reservation, _ in items:
            reservation.leave_queue()  # computing now: no longer queued work
        return list(self.backend.infer_images([staged for _, staged in items]))

    def _decode(self, data: bytes, reservation: Reservation) -> tuple[np.ndarray, Prepared, object]:
        """Decode (straight to about the model's size when the estimate allowed it), resize/pad
        to the bucket, and hand the pixels to the backend's ``stage``."""
        fit = reservation.estimate.decode_fit or (1 << 30, 1 << 30)  # too large to draft: full decode
        rgb, size = decode_scaled(data, self.settings.max_image_pixels, fit)
        self.metrics.decoded.inc()
        prepared = self.policy.prepare(rgb)
        if size != prepared.original:  # decoded smaller: labels go back to the full size
            prepared = dataclasses.replace(prepared, original=size)
        return rgb, prepared, self.backend.stage(prepared.pixels)

    async def segment(self, data: bytes, reservation: Reservation, keep_rgb: bool = False) -> Segmentation:
        """Decode, batch, restore; ``reservation`` (from ``reserve``) must be held throughout."""
        loop = asyncio.get_running_loop()
        rgb, prepared, staged = await loop.run_in_executor(self.pool, self._decode, data, reservation)
        rgb = rgb if keep_rgb else None  # not needed past the bucket: free it before the queue
        outcome = await self.batcher.submit(prepared.bucket, (reservation, staged))
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
