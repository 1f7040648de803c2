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
batch's download overlaps the next one's compute; the caller waits for it outside the lock. Shapes
that were not captured run eagerly on the compute stream, under the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Staged:
    """One input on its way to the device: the device tensor and the event of its upload."""

    tensor: torch.Tensor
    uploaded: torch.cuda.Event


class ShapeGraphs:
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], device: torch.device):
        """``fn``: device tensor -> device tensor, the same work for every call of one shape."""
        self.fn = fn
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
    def capture(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Run ``fn`` once eagerly (cuDNN and Triton tune their kernels then; neither may run
        during capture), then record it for inputs of ``shape``."""
        static_in = torch.zeros(shape, dtype=dtype, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            self.fn(static_in)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.fn(static_in)
        self._pool = graph.pool()
        self._graphs[tuple(shape)] = (graph, static_in, static_out)

    def graph(self, shape: tuple[int, ...]) -> torch.cuda.CUDAGraph:
        """The graph captured for ``shape`` (its replay alone times the GPU work, as bench.perf does)."""
        return self._graphs[tuple(shape)][0]

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
        entry = self._graphs.get((len(items), *items[0].tensor.shape))
        compute = torch.cuda.current_stream(self.device)
        with self._lock:
            for item in items:
                compute.wait_event(item.uploaded)
                item.tensor.record_stream(compute)  # the allocator must not reuse it before compute reads it
            tensors = [item.tensor for item in items]
            if entry is None:
                out = self.fn(torch.stack(tensors))
            else:
                graph, static_in, static_out = entry
                torch.stack(tensors, out=static_in)
                graph.replay()
                out = static_out.clone()
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
