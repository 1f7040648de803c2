"""One captured CUDA graph per batch shape, fed by per-image uploads that start before the batch.

Eager PyTorch launches ~150 kernels per DeepLabV3+ forward from Python. Under load the service's
decode and encode threads hold the GIL much of the time, so the inference thread waits for it
between launches and the GPU idles; a replayed graph is one launch. The graphs share one memory
pool (they never run at the same time: all replays go to one stream, in order).

Inputs reach the device one image at a time, ahead of their batch: ``stage`` copies an image into
pinned memory and starts its upload on the upload stream, from the caller's thread (the service's
codec threads, right after decoding), so a batch starts with its pixels already on the device and
the inference thread only gathers them (one device-to-device copy). Several threads may call at
once (the batcher keeps two batches in flight). Only the compute stream's part is serialised under
a lock: wait for the batch's uploads, gather them into the graph's static input, replay, copy the
static output out (the next replay overwrites it). The download runs on its own stream, so one
batch's download overlaps the next one's compute; the caller waits for it outside the lock.

A batch of a size that was not captured runs padded in the next larger graph of its image shape
when that costs at most ``MAX_PADDING`` (the service captures the ``batch_ladder`` sizes, 1.5x
apart, so start-up does not grow with the max batch size). Without one, ``capture_size(n)``
(when given) names the batch size to capture for it then and there, under the lock, without
cuDNN's per-shape tuning (rare image shapes are captured on first use, not at start-up);
otherwise the batch runs eagerly on the compute stream, under the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

#: a batch of n runs in a captured graph of up to this many times n (the padding is computed and dropped)
MAX_PADDING = 1.5


@dataclass(frozen=True)
class Staged:
    """One input on its way to the device: the device tensor and the event of its upload."""

    tensor: torch.Tensor
    uploaded: torch.cuda.Event


class ShapeGraphs:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device, capture_size: Callable[[int], int] | None = None):
        """``fn``: device tensor -> device tensor, the same work for every call of one shape;
        ``capture_size``: the batch size to capture on first use for a batch of n (None: eager)."""
        self.fn = fn
        self.capture_size = capture_size
        self.device = device
        self._graphs: dict[tuple[int, ...], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = None
        self._lock = threading.Lock()
        self._upload = torch.cuda.Stream(device)
        self._download = torch.cuda.Stream(device)

    @property
    def shapes(self) -> list[tuple[int, ...]]:
        return list(self._graphs)

    @torch.inference_mode()
    def capture(self, shape: tuple[int, ...], dtype: torch.dtype, while_serving: bool = False) -> None:
        """Run ``fn`` once eagerly (cuDNN and Triton tune their kernels then; neither may run
        during capture), then record it for inputs of ``shape``. ``while_serving``: other threads
        keep staging inputs meanwhile, so only this thread's calls are checked during capture."""
        static_in = torch.zeros(shape, dtype=dtype, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local" if while_serving else "global"):
            static_out = self.fn(static_in)
        self._pool = graph.pool()
        self._graphs[tuple(shape)] = (graph, static_in, static_out)

    def graph(self, shape: tuple[int, ...]) -> torch.cuda.CUDAGraph:
        """The graph captured for ``shape`` (its replay alone times the GPU work, as bench.perf does)."""
        return self._graphs[tuple(shape)][0]

    def _graph_for(self, n: int, image_shape: tuple[int, ...]):
        """The captured graph of the smallest batch >= n for this image shape, within MAX_PADDING."""
        sizes = sorted(shape[0] for shape in self._graphs if shape[1:] == image_shape and n <= shape[0] <= n * MAX_PADDING)
        return self._graphs[(sizes[0], *image_shape)] if sizes else None

    def _capture_untuned(self, shape: tuple[int, ...], dtype: torch.dtype):
        benchmark = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # heuristics: tuning would stall the batches waiting
        try:
            self.capture(shape, dtype, while_serving=True)
        finally:
            torch.backends.cudnn.benchmark = benchmark
        return self._graphs[shape]

    def stage(self, pixels: np.ndarray) -> Staged:
        """Start copying one uint8 input to the device; returns at once (the copy runs on the upload stream)."""
        host = torch.empty(pixels.shape, dtype=torch.uint8, pin_memory=True)
        np.copyto(host.numpy(), pixels)  # single-threaded and GIL-free, unlike torch's copy_ on CPU
        with torch.cuda.stream(self._upload):
            tensor = host.to(self.device, non_blocking=True)  # the host block stays reserved until this copy ends
            uploaded = torch.cuda.Event()
            uploaded.record()
        return Staged(tensor, uploaded)

    @torch.inference_mode()
    def __call__(self, items: Sequence[Staged]) -> torch.Tensor:
        """Staged inputs -> ``fn(their stack)`` as a pinned CPU tensor."""
        n, image_shape = len(items), tuple(items[0].tensor.shape)
        compute = torch.cuda.current_stream(self.device)
        with self._lock:
            entry = self._graph_for(n, image_shape)
            if entry is None and self.capture_size is not None:
                entry = self._capture_untuned((self.capture_size(n), *image_shape), items[0].tensor.dtype)
            for item in items:
                compute.wait_event(item.uploaded)
                item.tensor.record_stream(compute)  # the allocator must not reuse it before compute reads it
            tensors = [item.tensor for item in items]
            if entry is None:
                out = self.fn(torch.stack(tensors))
            else:
                graph, static_in, static_out = entry
                torch.stack(tensors, out=static_in[:n])  # rows past n keep an earlier batch's pixels
                graph.replay()
                out = static_out[:n].clone()
            # Enqueued under the lock too, so the download stream waits for this batch's compute
            # only (a later caller's wait would otherwise sit in front of this copy).
            self._download.wait_stream(compute)
            out.record_stream(self._download)
            with torch.cuda.stream(self._download):
                result = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                result.copy_(out, non_blocking=True)
                done = torch.cuda.Event()
                done.record()
        done.synchronize()
        return result
