"""Batching policy: which queued items form the next batch, and which items are admitted at all.

Kept apart from the batcher's mechanism (threads, futures, timeouts, cancellation), the way
Triton separates its scheduler's policy from its queues and LitServe its ``batch`` hooks from its
loop: a new policy (fair buckets, a byte budget) is a new class here, and the batcher is untouched.
A policy is pure bookkeeping on what it is shown, so it is tested without threads or clocks.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple, Protocol

from service.errors import QueueFull


class Queued(Protocol):
    """What a policy sees of a queued item: when it arrived (``time.perf_counter`` seconds)."""

    enqueued: float


class Dispatch(NamedTuple):
    """Run the first ``size`` items of group ``key`` now."""

    key: Hashable
    size: int


class Wait(NamedTuple):
    """Dispatch nothing yet; ask again after ``seconds``, or (``None``) once an item arrives or a
    batch finishes."""

    seconds: float | None


class BatchPolicy(Protocol):
    def admit(self, depth: int) -> None:
        """Raise ``QueueFull`` if one more item, on top of ``depth`` queued ones, is refused."""

    def next_batch(self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, now: float) -> Dispatch | Wait:
        """Choose from the groups (oldest item first; at least one non-empty) while an inference
        thread is free and ``computing`` batches are running."""


class DynamicBatching:
    """Triton's dynamic batcher / Ray Serve's ``@serve.batch``: a group (shape bucket) goes as soon
    as it holds ``max_batch_size`` items (the one with the oldest item first), or, with no batch
    computing, once its oldest item has waited ``max_delay_s``. While a batch computes, a partial
    batch waits for it, collecting new arrivals, rather than queueing a small batch on a busy GPU.
    At most ``capacity`` items wait."""

    def __init__(self, max_batch_size: int, max_delay_s: float, capacity: int):
        if max_batch_size < 1 or capacity < 1 or max_delay_s < 0:
            raise ValueError(
                f"need max_batch_size >= 1, capacity >= 1, max_delay_s >= 0; got {max_batch_size}, {capacity}, {max_delay_s}"
            )
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.capacity = capacity

    def admit(self, depth: int) -> None:
        if depth >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} images waiting); retry shortly")

    def next_batch(self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, now: float) -> Dispatch | Wait:
        waiting = {key: q for key, q in queues.items() if q}
        full = [key for key, q in waiting.items() if len(q) >= self.max_batch_size]
        if full:
            return Dispatch(min(full, key=lambda k: waiting[k][0].enqueued), self.max_batch_size)
        if computing:
            return Wait(None)
        key = min(waiting, key=lambda k: waiting[k][0].enqueued)
        due_in = waiting[key][0].enqueued + self.max_delay_s - now
        return Dispatch(key, len(waiting[key])) if due_in <= 0 else Wait(due_in)
