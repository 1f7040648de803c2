"""One captured CUDA graph per batch shape, replayed from pinned host memory.

Eager PyTorch launches ~150 kernels per DeepLabV3+ forward from Python. Under load the service's
decode and encode threads hold the GIL much of the time, so the inference thread waits for it
between launches and the GPU idles; a replayed graph is one launch. The graphs share one memory
pool (they never run at the same time: all replays go to one stream, in order).

Several threads may call at once (the batcher keeps two batches in flight so one batch's host
work overlaps the other's GPU work). The copies run on their own streams, so one batch's upload
and another's download overlap the compute stream's work instead of queueing on it (a batch of
eight 2048x1024 images is 50 MB up and 16 MB down: ~2.5 ms of PCIe per 50 ms batch, which would
otherwise leave the SMs idle). Only the compute stream's part is serialised under a lock: wait
for the upload, copy it into the graph's static input, replay, copy the static output out (the
next replay overwrites it). The caller waits for its download outside the lock. Shapes that were
not captured run eagerly on the compute stream, under the same lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import torch


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

    @torch.inference_mode()
    def __call__(self, host: torch.Tensor) -> torch.Tensor:
        """``host`` (pinned CPU tensor) -> ``fn(host on the device)`` as a CPU tensor."""
        entry = self._graphs.get(tuple(host.shape))
        compute = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self._upload):
            staged = host.to(self.device, non_blocking=True)
            uploaded = torch.cuda.Event()
            uploaded.record()
        with self._lock:
            compute.wait_event(uploaded)  # this batch's upload only, not a later caller's
            staged.record_stream(compute)  # the allocator must not reuse it before compute reads it
            if entry is None:
                out = self.fn(staged)
            else:
                graph, static_in, static_out = entry
                static_in.copy_(staged)
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
