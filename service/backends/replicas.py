"""One model on several devices behind one batcher: each batch goes to an idle replica.

``device = "cuda"`` on a machine with several GPUs (or an explicit list such as
``cuda:0,cuda:1``) serves one replica per device; the batcher may hand over as many batches at
once as the replicas together take, so one queue keeps every GPU busy and requests keep being
batched across all of them. Images are staged in host memory (which GPU computes a batch is only
known when the batch starts), then uploaded by the replica as one batch.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from service.backends.base import Backend


def expand_devices(device: str, gpus: int) -> list[str]:
    """``cuda`` -> every visible GPU (``gpus`` of them, at least one); a comma-separated list -> its
    entries; anything else -> itself."""
    if device == "cuda" and gpus > 1:
        return [f"cuda:{i}" for i in range(gpus)]
    return [d.strip() for d in device.split(",") if d.strip()] or [device]


class Replicas(Backend):
    def __init__(self, replicas: list[Backend]):
        first = replicas[0]
        super().__init__(first.model, ",".join(str(r.device) for r in replicas), first.requested_precision)
        self.name, self.extensions = first.name, first.extensions
        self.replicas = replicas
        self._idle: queue.SimpleQueue[Backend] = queue.SimpleQueue()

    def load(self):
        configs = [replica.load() for replica in self.replicas]
        first = self.replicas[0]
        if len({c.name for c in configs}) != 1 or len({r.precision for r in self.replicas}) != 1:
            raise ValueError("the replicas of one model must serve one config in one precision")
        self.config, self.precision, self.provenance = configs[0], first.precision, first.provenance
        for replica in self.replicas:  # a replica taking two batches at once is idle twice
            for _ in range(replica.concurrent_batches):
                self._idle.put(replica)
        self.concurrent_batches = sum(r.concurrent_batches for r in self.replicas)
        return self.config

    def warm_up(self, shapes: Iterable[tuple[int, int, int]], tune: bool = True) -> None:
        """Every replica at once: each on its own device."""
        shapes = list(shapes)
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            list(pool.map(lambda r: r.warm_up(shapes, tune), self.replicas))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        replica = self._idle.get()  # the batcher never hands over more batches than there are slots
        try:
            return replica.infer(batch)
        finally:
            self._idle.put(replica)

    def infer_images(self, staged: Sequence[np.ndarray]) -> np.ndarray:
        return self.infer(np.stack(staged))

    def memory_bytes(self) -> int:
        """Per device (each replica holds its own weights)."""
        return max(r.memory_bytes() for r in self.replicas)

    def describe(self) -> dict:
        return {**self.replicas[0].describe(), "replicas": [str(r.device) for r in self.replicas]}

    def close(self) -> None:
        for replica in self.replicas:
            replica.close()
