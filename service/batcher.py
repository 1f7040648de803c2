"""Dynamic batching: requests queue up, batches go to one inference worker thread.

Semantics follow Triton's dynamic batcher / Ray Serve's ``@serve.batch``: a batch of one *key*
(shape bucket) is dispatched as soon as it holds ``max_batch_size`` items, or when its oldest item
has waited ``max_delay_s``. The queue holds at most ``capacity`` items (more -> ``QueueFull``); an
item still queued ``timeout_s`` after it arrived is removed and its caller gets ``QueueTimeout``; a
caller that is cancelled (client gone) while queued is removed and never computed. Inference runs
in dedicated threads so the event loop keeps serving: up to ``concurrency`` batches at once (a GPU
backend stages one batch while the other runs). While a batch is computing, the next one is
dispatched only once full; a partial batch waits for the running one to finish (collecting the
items that arrive meanwhile) instead of queueing a small batch on a busy GPU. If a batch raises,
its items are retried one by one so that one bad item fails only its own request.

Knows nothing about HTTP or torch: ``run_batch`` is any ``list -> list`` callable.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from service.errors import QueueFull, QueueTimeout


@dataclass(frozen=True)
class Outcome:
    """One item's result plus what the caller reports about its trip through the batcher."""

    value: Any
    batch_size: int
    queue_s: float
    inference_s: float


@dataclass(eq=False)
class _Entry:
    key: Hashable
    item: Any
    enqueued: float
    future: asyncio.Future
    started: bool = field(default=False)


class Batcher:
    def __init__(
        self,
        run_batch: Callable[[list[Any]], list[Any]],
        *,
        max_batch_size: int,
        max_delay_s: float,
        capacity: int,
        timeout_s: float,
        on_batch: Callable[[int, float], None] | None = None,
        concurrency: int = 1,
    ):
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.capacity = capacity
        self.timeout_s = timeout_s
        self._on_batch = on_batch  # (batch_size, inference_seconds), called on the event loop
        self._queues: dict[Hashable, deque[_Entry]] = {}
        self._depth = 0
        self._wakeup = asyncio.Event()
        self.concurrency = concurrency
        self._executor = ThreadPoolExecutor(concurrency, thread_name_prefix="inference")
        self._running: set[asyncio.Task] = set()
        self._computing = 0  # batches handed to the inference threads and not yet returned
        self._task: asyncio.Task | None = None

    @property
    def depth(self) -> int:
        """Items waiting in the queue (not yet in a batch)."""
        return self._depth

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._dispatch_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        self._executor.shutdown(wait=True)

    def check_capacity(self) -> None:
        """Raise ``QueueFull`` if a new item would be refused: callers can shed load before
        doing any work for a request."""
        if self._depth >= self.capacity:
            raise QueueFull(f"queue is full ({self.capacity} images waiting); retry shortly")

    async def submit(self, key: Hashable, item: Any) -> Outcome:
        """Queue ``item`` in batch group ``key`` and wait for its result."""
        self.check_capacity()
        loop = asyncio.get_running_loop()
        entry = _Entry(key, item, time.perf_counter(), loop.create_future())
        self._queues.setdefault(key, deque()).append(entry)
        self._depth += 1
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(entry.future), self.timeout_s)
        except TimeoutError:
            if self._discard(entry):
                raise QueueTimeout(
                    f"request waited more than {self.timeout_s:g} s in the queue"
                ) from None
            return await entry.future  # its batch already started: let it finish
        except asyncio.CancelledError:
            if not self._discard(entry):
                entry.future.cancel()  # already computing: its result is dropped unseen
            raise

    def _discard(self, entry: _Entry) -> bool:
        """Remove a still-queued entry; False if its batch has already started."""
        if entry.started:
            return False
        self._queues[entry.key].remove(entry)
        self._depth -= 1
        entry.future.cancel()
        return True

    def _next_key(self, now: float) -> tuple[Hashable | None, float | None]:
        """The group to dispatch now (a full one first, else, with no batch computing, one whose
        oldest item is due), or ``(None, seconds until the oldest item is due)``, or ``(None,
        None)``: wait for an item or for a computing batch to finish."""
        if self._computing >= self.concurrency:  # every inference thread is busy
            return None, None
        full = [q for q in self._queues.values() if len(q) >= self.max_batch_size]
        if full:
            return min(full, key=lambda q: q[0].enqueued)[0].key, 0.0
        if self._computing:
            return None, None
        oldest = min((q for q in self._queues.values() if q), key=lambda q: q[0].enqueued)
        due_in = oldest[0].enqueued + self.max_delay_s - now
        return (oldest[0].key, 0.0) if due_in <= 0 else (None, due_in)

    async def _dispatch_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            self._computing += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Entry]:
        """Wait until an inference thread is free and some group is full or due, then take up to
        ``max_batch_size`` of it."""
        while True:
            self._wakeup.clear()
            if not self._depth:
                await self._wakeup.wait()
                continue
            key, due_in = self._next_key(time.perf_counter())
            if key is None:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), due_in)
                except TimeoutError:
                    pass
                continue
            queue = self._queues[key]
            batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
            for entry in batch:
                entry.started = True
            self._depth -= len(batch)
            return batch

    async def _run(self, batch: list[_Entry]) -> None:
        """Run one batch on a free inference thread and resolve its callers' futures."""
        try:
            start = time.perf_counter()
            results = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._run_isolated, [e.item for e in batch]
            )
            inference_s = time.perf_counter() - start
        finally:
            self._computing -= 1
            self._wakeup.set()  # a thread is free; a partial batch may have been waiting for it
        if self._on_batch is not None:
            self._on_batch(len(batch), inference_s)
        for entry, result in zip(batch, results):
            if entry.future.done():
                continue
            if isinstance(result, BaseException):
                entry.future.set_exception(result)
            else:
                entry.future.set_result(Outcome(result, len(batch), start - entry.enqueued, inference_s))

    def _run_isolated(self, items: list[Any]) -> list[Any]:
        """Run a batch; if it fails, run its items one by one so only the culprit fails."""
        try:
            results = self._run_batch(items)
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)} items")
            return results
        except Exception as exc:
            if len(items) == 1:
                return [exc]
            return [self._run_isolated([item])[0] for item in items]
