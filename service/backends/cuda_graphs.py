"""One captured CUDA graph per batch shape, replayed from pinned host memory.

Eager PyTorch launches ~150 kernels per DeepLabV3+ forward from Python. Under load the service's
decode and encode threads hold the GIL much of the time, so the inference thread waits for it
between launches and the GPU idles; a replayed graph is one launch. The graphs share one memory
pool (they never run at the same time: all replays go to one stream, in order).

Several threads may call at once (the batcher keeps two batches in flight so one batch's host
work overlaps the other's GPU work). Only the enqueueing is serialised: upload into the graph's
static input, replay, download of its static output into the caller's own pinned buffer, then an
event; the caller waits for its event outside the lock. Shapes that were not captured run
eagerly on the same stream, under the same lock.
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
        with self._lock:
            if entry is None:
                out = self.fn(host.to(self.device, non_blocking=True))
            else:
                graph, static_in, out = entry
                static_in.copy_(host, non_blocking=True)
                graph.replay()
            result = torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
            result.copy_(out, non_blocking=True)
            done = torch.cuda.Event()
            done.record()
        done.synchronize()
        return result
