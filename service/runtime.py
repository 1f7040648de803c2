"""The segmentation pipeline behind /segment, independent of HTTP.

One ``Runtime`` serves one model version (``service.repository`` holds them all, by name). The
HTTP layer talks to it through ``admit`` (readiness, capacity, in-flight counting for the
drain), ``segment``, ``encode`` and ``describe`` only. ``start`` loads the backend, checks the
model fits the device's free memory (``service.repository.capacity``) and warms it up in worker
threads (so /healthz answers meanwhile), then starts the batcher; ``open`` lets requests in. Per request: decode + resize/pad in the decode pool (which also
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
from service import tracing
from service.admission import Admission, MemoryBudget, Reservation, estimate
from service.backends import Backend, create_backend
from service.batcher import Batcher, Outcome
from service.errors import NotReady
from service.lifecycle import Lifecycle
from service.metrics import ModelMetrics, ServiceMetrics
from service.repository import capacity
from service.repository.specs import ModelSpec
from service.settings import Settings

log = logging.getLogger("service")


@dataclass(frozen=True)
class Segmentation:
    rgb: np.ndarray | None  # the decoded image, kept for overlays only
    labels: np.ndarray  # H x W uint8 class indices at the original size
    outcome: Outcome  # batch size and timings


class Runtime:
    def __init__(
        self, spec: ModelSpec, settings: Settings, service_metrics: ServiceMetrics, pool: ThreadPoolExecutor,
        memory: MemoryBudget, backend: Backend | None = None,
    ):  # fmt: skip
        """``settings``: the server's with the model's own values; ``pool``: the decode/encode
        threads and ``memory``: the requests' budget, both shared by every model."""
        self.spec = spec
        self.settings = settings
        self.service_metrics = service_metrics
        self.metrics: ModelMetrics | None = None  # once loaded: the series carry the model's name
        self.lifecycle = Lifecycle()
        self.backend = backend or create_backend(
            spec.source, settings.backend, settings.device, settings.precision, cuda_graphs=settings.cuda_graphs,
            tta=settings.tta, test_scale=settings.test_scale,
        )
        self.pool = pool
        self.memory = memory
        self.config = None
        self.policy: InputPolicy | None = None
        self.batcher: Batcher | None = None
        self.admission: Admission | None = None

    def warm_up_shapes(self) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
        """``(tuned, untuned)`` batch shapes to warm up (``InputPolicy.warm_up_shapes``). On CUDA,
        kernels and graphs are specialised per shape: the main buckets at the max batch size get
        cuDNN's per-shape tuning (slow), the ladder's smaller sizes not (fast, and nearly as quick
        to run: bench/RESULTS.md), other buckets are captured on first use."""
        on_cuda = str(self.backend.device).startswith("cuda")
        return self.policy.warm_up_shapes(self.settings.max_batch_size, per_batch_size=on_cuda)

    @property
    def name(self) -> str | None:
        """The served name: the spec's, else the config's (None until loaded)."""
        return self.spec.name or (self.config.name if self.config is not None else None)

    @property
    def version(self) -> str:
        return self.spec.version

    async def start(self) -> None:
        """Load, check the memory, warm up and start batching; requests wait for ``open``."""
        s = self.settings
        started = time.perf_counter()
        self.config = await asyncio.to_thread(self.backend.load)
        loaded = time.perf_counter()
        self.policy = InputPolicy.for_config(self.config)
        capacity.require_room(self.backend, self.policy, s.max_batch_size, self.memory, f"model {self.name!r}")
        self.metrics = self.service_metrics.for_model(self.name, self.version)
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
            concurrency=s.instances or self.backend.concurrent_batches,
        )
        self.batcher.start()
        self.admission = self._admission()
        self.metrics.track(lambda: self.batcher.depth, self.admission)
        self.metrics.describe(self.config, self.backend.name, str(self.backend.device), self.backend.precision.value)
        log.info("loaded", extra={
            "model": self.name, "version": self.version,
            "config": self.config.name, "backend": self.backend.name, "device": str(self.backend.device),
            "precision": self.backend.precision.value,
            "load_s": round(loaded - started, 2), "warm_up_s": round(time.perf_counter() - loaded, 2),
        })  # fmt: skip

    def open(self) -> None:
        """Admit requests (after ``start``)."""
        self.lifecycle.loaded = True

    async def stop(self) -> None:
        """Stop batching (after the drain)."""
        if self.batcher is not None:
            await self.batcher.stop()

    async def release(self) -> None:
        """After ``stop``, when the model is unloaded: drop its series and free its memory."""
        if self.metrics is not None:
            self.metrics.remove()
        await asyncio.to_thread(self.backend.close)

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
        """Stop admitting (a plain attribute write: safe inside a signal handler)."""
        self.lifecycle.draining = True

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
        """The queue's bounds over the shared memory budget."""
        s = self.settings
        full = max(w * h for w, h in self.policy.full_buckets())
        return Admission(self.memory, s.queue_capacity, s.queue_capacity_pixels or s.queue_capacity * full)

    def reserve(self, data: bytes, output: str, rle: bool = False) -> Reservation:
        """Read the image header and reserve the request's estimated peak memory and model work,
        before anything is decoded: 413 / 415 / 400 for the header, 413 if it can never fit the
        budget, 429 if the queue is full, 503 if the budget is busy. Release it when answered."""
        fmt, width, height = probe(data, self.settings.max_image_pixels)
        cost = estimate(self.policy, fmt, (width, height), len(data), output, rle, self.settings.jpeg_draft_decode)
        try:
            return self.admission.reserve(cost)
        except Exception as exc:
            self.metrics.refuse(getattr(exc, "code", "error"))
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
        with tracing.span("decode"):
            rgb, prepared, staged = await loop.run_in_executor(self.pool, self._decode, data, reservation)
        rgb = rgb if keep_rgb else None  # not needed past the bucket: free it before the queue
        outcome = await tracing.submit(self.batcher, prepared.bucket, (reservation, staged))
        self.metrics.queue_wait.observe(outcome.queue_s)
        with tracing.span("restore"):
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
            "name": self.name,
            "version": self.version,
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
                "instances": self.batcher.concurrency,
                "max_queue_delay_ms": s.max_queue_delay_ms,
                "queue_capacity": s.queue_capacity,
                "request_timeout_s": s.request_timeout_s,
            },
            "reference": None
            if zoo is None
            else {"miou": zoo.miou, "miou_ms_flip": zoo.miou_ms_flip, "fps": zoo.fps, "fps_gpu": zoo.fps_gpu, "dataset": zoo.dataset_label},
        }
