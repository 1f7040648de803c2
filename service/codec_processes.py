"""Decoding and PNG encoding in worker processes, pixels and labels through shared memory.

In one process the decode, resize and PNG threads share the GIL with the event loop and the
inference thread: with small images (camera frames, 512x512 tiles) that, not the GPU, sets the
rate. ``CodecProcesses`` moves the GIL-heavy steps out: a worker decodes an upload, resizes and
pads it into its bucket (the same ``decode_scaled`` / ``InputPolicy.prepare`` as in-process, so
the same limits and labels) and leaves the bucket's pixels in a shared-memory block the server
maps and stages at once; label maps to PNG-encode go the other way. Only the upload, the block's
name and the small PNG cross the pipe: images are never pickled.

A block is created by whoever writes it and unlinked by whoever reads it; the writer drops it
from its resource tracker (which would otherwise unlink it when the writer exits). A block whose
reader never ran (a failed call) is unlinked by the server.
"""

from __future__ import annotations

import asyncio
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import resource_tracker, shared_memory

import numpy as np

from model.pipeline.buckets import InputPolicy, Prepared
from model.pipeline.decode import decode_scaled
from model.pipeline.render import encode_label_png


@dataclass(frozen=True)
class Block:
    """A shared-memory array: its name, shape and what it describes."""

    name: str
    shape: tuple[int, ...]


def _write(array: np.ndarray) -> Block:
    """``array`` into a new block that the reader unlinks (so this process's tracker forgets it)."""
    shm = shared_memory.SharedMemory(create=True, size=max(1, array.nbytes))
    np.ndarray(array.shape, np.uint8, shm.buf)[...] = array
    block = Block(shm.name, array.shape)
    shm.close()
    resource_tracker.unregister(shm._name, "shared_memory")  # noqa: SLF001 (the tracker's key)
    return block


def _take(block: Block) -> np.ndarray:
    """The block's array, copied out, and the block unlinked."""
    shm = shared_memory.SharedMemory(block.name)
    try:
        return np.ndarray(block.shape, np.uint8, shm.buf).copy()
    finally:
        shm.close()
        shm.unlink()


def _decode_prepare(data: bytes, max_pixels: int, fit: tuple[int, int], policy: InputPolicy) -> tuple[Block, Prepared]:
    """In a worker: decode, resize/pad into the bucket; the pixels in a block, the rest as meta."""
    rgb, size = decode_scaled(data, max_pixels, fit)
    prepared = policy.prepare(rgb)
    # decoded smaller (JPEG draft): the labels go back to the full size
    return _write(prepared.pixels), Prepared(None, prepared.bucket, prepared.resized, size)


def _encode_png(block: Block, palette) -> bytes:
    """In a worker: the label map from its block (unlinked here) as a palette PNG."""
    return encode_label_png(_take(block), palette)


def _ready() -> None:
    """Run once per worker at start-up, so the first requests do not pay the imports."""


class CodecProcesses:
    def __init__(self, workers: int):
        # spawn: the server holds a CUDA context and threads, which a fork would copy broken
        self.workers = workers
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.gather(*(loop.run_in_executor(self.pool, _ready) for _ in range(self.workers)))

    async def decode(self, data: bytes, max_pixels: int, fit: tuple[int, int], policy: InputPolicy) -> Prepared:
        """``Prepared`` with the bucket's pixels, decoded in a worker (ImageError as in-process)."""
        block, meta = await asyncio.get_running_loop().run_in_executor(self.pool, _decode_prepare, data, max_pixels, fit, policy)
        return Prepared(_take(block), meta.bucket, meta.resized, meta.original)

    async def encode_png(self, labels: np.ndarray, palette) -> bytes:
        block = _write(np.ascontiguousarray(labels))
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, _encode_png, block, palette)
        except BaseException:
            _unlink_quietly(block)
            raise

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _unlink_quietly(block: Block) -> None:
    try:
        shm = shared_memory.SharedMemory(block.name)
    except FileNotFoundError:
        return
    shm.close()
    shm.unlink()
