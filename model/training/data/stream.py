"""Training batches for iteration k, produced where they keep the accelerator busy.

Two ways, same transforms, same sample order:
- in memory (`workers=0`): every pair is decoded once and kept on the training device as uint8
  tensors; each batch is augmented there. For datasets that fit (CamVid: 367 frames, 190 MB) this
  takes decoding and host-to-device copies off the critical path entirely. On a GPU a thread
  builds the next batches on a side CUDA stream while the current step runs, so the many small
  per-sample kernels overlap the step instead of preceding it.
- streamed (`workers>0`): DataLoader worker processes decode and augment whole batches on the CPU
  (one thread each) and hand over pinned tensors, for datasets too large to hold.
"""

from __future__ import annotations

import queue
import random
import threading
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .layouts import SegDataset
from ...pipeline.decode import load_image
from .reading import read_label
from .sampling import index_at, positions, sample_seed
from .transforms import TrainPipeline, augment_batch

Batch = tuple[torch.Tensor, torch.Tensor]  # N x 3 x h x w float32 (normalised), N x h x w uint8


def _to_tensors(img: np.ndarray, label: np.ndarray, device: torch.device | str = "cpu") -> Batch:
    return torch.from_numpy(img).permute(2, 0, 1).contiguous().to(device), torch.from_numpy(label).to(device)


class _BatchSpec:
    """The sample indices and augmentation draws of one rank's batch at iteration k."""

    def __init__(self, n: int, pipe: TrainPipeline, batch: int, seed: int, rank: int, world: int):
        self.n, self.pipe, self.batch, self.seed, self.rank, self.world = n, pipe, batch, seed, rank, world

    def indices(self, iteration: int) -> list[tuple[int, random.Random]]:
        pos = positions(iteration, self.batch, self.rank, self.world)
        return [(index_at(p, self.n, self.seed), random.Random(sample_seed(p, self.seed))) for p in pos]


class _DiskBatches(Dataset):
    """Item k = the augmented batch of iteration k, built in a worker process."""

    def __init__(self, dataset: SegDataset, spec: _BatchSpec):
        self.dataset, self.spec = dataset, spec

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, iteration: int) -> Batch:
        samples, params = [], []
        for i, rng in self.spec.indices(iteration):
            img_path, seg_path = self.dataset.pairs[i]
            img, label = load_image(img_path), read_label(seg_path, self.dataset.reduce_zero_label)
            samples.append(_to_tensors(img, label))
            params.append(self.spec.pipe.sample(rng, img.shape[:2]))
        return augment_batch(self.spec.pipe, samples, params)


def _single_thread_worker(_: int) -> None:
    torch.set_num_threads(1)


class TrainBatches:
    """`batches(start, stop)` yields iteration start..stop-1's batches on `device`."""

    def __init__(
        self,
        dataset: SegDataset,
        pipe: TrainPipeline,
        batch: int,
        seed: int,
        rank: int = 0,
        world: int = 1,
        device: torch.device | str = "cpu",
        workers: int = 0,
    ):
        self.dataset, self.pipe, self.device, self.workers = dataset, pipe, torch.device(device), workers
        self.spec = _BatchSpec(len(dataset), pipe, batch, seed, rank, world)
        self._memory: list[Batch] | None = None
        if workers == 0:
            self._memory = [
                _to_tensors(load_image(i), read_label(s, dataset.reduce_zero_label), self.device) for i, s in dataset.pairs
            ]

    def batch(self, iteration: int) -> Batch:
        """One in-memory batch (the in-memory path's whole job; also used by tests and benchmarks)."""
        if self._memory is None:
            return tuple(t.to(self.device) for t in _DiskBatches(self.dataset, self.spec)[iteration])
        picks = self.spec.indices(iteration)
        samples = [self._memory[i] for i, _ in picks]
        params = [self.pipe.sample(rng, tuple(img.shape[1:])) for (img, _), (_, rng) in zip(samples, picks)]
        return augment_batch(self.pipe, samples, params)

    def batches(self, start: int, stop: int) -> Iterator[Batch]:
        if self._memory is not None and self.device.type == "cuda":
            yield from self._prefetched(start, stop)
            return
        if self._memory is not None:
            for k in range(start, stop):
                yield self.batch(k)
            return
        loader = DataLoader(
            _DiskBatches(self.dataset, self.spec),
            batch_size=None,
            sampler=range(start, stop),
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            worker_init_fn=_single_thread_worker,
            persistent_workers=False,
            prefetch_factor=4,
        )
        for img, label in loader:
            yield img.to(self.device, non_blocking=True), label.to(self.device, non_blocking=True)

    def _prefetched(self, start: int, stop: int, depth: int = 3) -> Iterator[Batch]:
        """In-memory GPU batches built by a producer thread on its own stream, `depth` ahead."""
        side = torch.cuda.Stream(self.device)
        ready: queue.Queue = queue.Queue(maxsize=depth)
        stop_flag = threading.Event()

        def produce() -> None:
            try:
                with torch.cuda.stream(side):
                    for k in range(start, stop):
                        img, label = self.batch(k)
                        done = torch.cuda.Event()
                        done.record(side)
                        while not stop_flag.is_set():
                            try:
                                ready.put((img, label, done), timeout=0.1)
                                break
                            except queue.Full:
                                continue
                        if stop_flag.is_set():
                            return
                ready.put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                ready.put(exc)

        worker = threading.Thread(target=produce, name="train-batches", daemon=True)
        worker.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                img, label, done = item
                current = torch.cuda.current_stream(self.device)
                current.wait_event(done)
                img.record_stream(current)
                label.record_stream(current)
                yield img, label
        finally:
            stop_flag.set()
            worker.join()
