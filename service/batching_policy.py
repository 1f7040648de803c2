"""Batching policy: which queued items form the next batch, and which items are admitted at all.

Kept apart from the batcher's mechanism (threads, futures, timeouts, cancellation), the way
Triton separates its scheduler's policy from its queues and LitServe its ``batch`` hooks from its
loop: a new policy (a byte budget, say) is a new class here, and the batcher is untouched.
A policy is pure bookkeeping on what it is shown, so it is tested without threads or clocks.
"""

from __future__ import annotations

import heapq
import math
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

    def next_batch(
        self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, now: float, flush: bool = False
    ) -> Dispatch | Wait:
        """Choose from the groups (oldest item first; at least one non-empty) while an inference
        thread is free and ``computing`` batches are running. ``flush``: no more arrivals are
        expected (draining), so no group waits for batch-mates."""

    def finishing_within(
        self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, concurrency: int, batch_s: float, window_s: float
    ) -> dict[Hashable, int]:
        """How many leading items of each group are expected to finish within ``window_s`` if
        everything queued is flushed, each batch takes ``batch_s`` and ``concurrency`` run at once."""


class DynamicBatching:
    """Triton's dynamic batcher / Ray Serve's ``@serve.batch``, fair across groups (shape buckets).

    A group is *ready* when it holds ``max_batch_size`` items (full) or its oldest item has waited
    ``max_delay_s`` (due). Of the ready groups, the one whose oldest item arrived first goes next,
    so a full bucket cannot starve a partial one: once due, an item waits only for a thread to
    free up and for the batches of items that arrived before it. For every group, the time an
    item is queued is at most ``max_delay_s + ceil((b + 1) / concurrency) * batch_time``, ``b`` the
    batches holding older items (each group's older items / ``max_batch_size``, rounded up; at most
    capacity / max_batch_size + groups; 0 when nothing older waits: then max delay plus one batch).
    A partial group that is not yet due waits, also while a batch computes, collecting arrivals
    rather than sending a small batch to a busy GPU. At most ``capacity`` items wait."""

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

    def next_batch(
        self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, now: float, flush: bool = False
    ) -> Dispatch | Wait:
        waiting = {key: q for key, q in queues.items() if q}
        due_in = {key: q[0].enqueued + self.max_delay_s - now for key, q in waiting.items()}
        ready = [k for k, q in waiting.items() if flush or len(q) >= self.max_batch_size or due_in[k] <= 0]
        if ready:
            key = min(ready, key=lambda k: waiting[k][0].enqueued)
            return Dispatch(key, min(len(waiting[key]), self.max_batch_size))
        return Wait(min(due_in.values()))

    def finishing_within(
        self, queues: Mapping[Hashable, Sequence[Queued]], computing: int, concurrency: int, batch_s: float, window_s: float
    ) -> dict[Hashable, int]:
        """Replays ``next_batch(flush=True)`` on a virtual clock: each batch takes ``batch_s`` on
        the first free thread; the ``computing`` ones are counted as just started (pessimistic)."""
        left = {key: list(q) for key, q in queues.items() if q}
        fits = dict.fromkeys(left, 0)
        threads = [batch_s] * min(computing, concurrency) + [0.0] * max(concurrency - computing, 0)
        heapq.heapify(threads)
        while any(left.values()):
            start = heapq.heappop(threads)
            key, size = self.next_batch(left, concurrency, math.inf, flush=True)
            if start + batch_s > window_s:
                break  # later batches start no earlier, so none of them fits either
            del left[key][:size]
            fits[key] += size
            heapq.heappush(threads, start + batch_s)
        return fits
