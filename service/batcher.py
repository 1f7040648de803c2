"""Dynamic batching mechanism: requests queue up per key, batches go to inference worker threads.

Which items form the next batch, and which are admitted, is the policy's decision
(``service.batching_policy``; ``DynamicBatching`` by default); this module carries it out. An item
still queued ``timeout_s`` after it arrived is removed and its caller gets ``QueueTimeout``; a
caller that is cancelled (client gone) while queued is removed and never computed. Inference runs
in dedicated threads so the event loop keeps serving: up to ``concurrency`` batches at once (a GPU
backend stages one batch while the other runs). If a batch raises, its items are retried one by
one so that one bad item fails only its own request.

Drain (``drain``): no more arrivals are expected, so every group goes without waiting for
batch-mates, and queued items that would not finish within the drain window (by the policy's
replay with the measured batch time) are refused at once with ``NotReady`` (503 + Retry-After),
as are later arrivals that would not; ``refuse_queued`` refuses whatever is still queued when the
window closes. The client retries on a pod that is not going away instead of timing out here.

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

from service.batching_policy import BatchPolicy, DynamicBatching, Wait
from service.errors import NotReady, QueueTimeout

EMA_WEIGHT = 0.2  # of the newest batch in ``batch_time_s``: follows a change within ~10 batches


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
    dequeued: bool = field(default=False)  # taken into a batch, or refused


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
        policy: Callable[[int, float, int], BatchPolicy] = DynamicBatching,
    ):
        """``policy`` is built from ``(max_batch_size, max_delay_s, capacity)``."""
        self._run_batch = run_batch
        self.policy = policy(max_batch_size, max_delay_s, capacity)
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
        self.batch_time_s: float | None = None  # moving average of inference time per batch
        self._drain_deadline: float | None = None  # perf_counter time the drain window closes

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
        self.policy.admit(self._depth)

    async def submit(self, key: Hashable, item: Any) -> Outcome:
        """Queue ``item`` in batch group ``key`` and wait for its result."""
        self.check_capacity()
        loop = asyncio.get_running_loop()
        entry = _Entry(key, item, time.perf_counter(), loop.create_future())
        self._queues.setdefault(key, deque()).append(entry)
        self._depth += 1
        self._wakeup.set()
        if self._drain_deadline is not None:
            self._refuse_late()
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
        """Remove a still-queued entry; False if it has left the queue (batch started, or refused)."""
        if entry.dequeued:
            return False
        self._queues[entry.key].remove(entry)
        self._depth -= 1
        entry.future.cancel()
        return True

    def drain(self, window_s: float) -> None:
        """Start draining: flush every group from now on, and refuse at once what cannot finish
        within ``window_s`` (all of it kept while no batch has been timed yet)."""
        self._drain_deadline = time.perf_counter() + window_s
        self._refuse_late()
        self._wakeup.set()

    def refuse_queued(self) -> int:
        """Refuse everything still queued (the drain window has closed); returns how many."""
        entries = [e for queue in self._queues.values() for e in queue]
        for entry in entries:
            self._refuse(entry)
        return len(entries)

    def _refuse_late(self) -> None:
        """Refuse the queued items the policy does not expect to finish before the drain deadline."""
        left = self._drain_deadline - time.perf_counter()
        if self.batch_time_s is None and left > 0:
            return
        fits = self.policy.finishing_within(self._queues, self._computing, self.concurrency, self.batch_time_s or 0.0, left)
        late = [e for key, queue in self._queues.items() for e in list(queue)[fits.get(key, 0) :]]
        for entry in late:
            self._refuse(entry)

    def _refuse(self, entry: _Entry) -> None:
        entry.dequeued = True
        self._queues[entry.key].remove(entry)
        self._depth -= 1
        entry.future.set_exception(NotReady("service is draining and this request could not finish before shutdown; retry"))

    async def _dispatch_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            self._computing += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Entry]:
        """Wait until an inference thread is free and the policy picks a batch, then take it."""
        while True:
            self._wakeup.clear()
            if not self._depth or self._computing >= self.concurrency:
                await self._wakeup.wait()  # an item arrives or a batch finishes
                continue
            flush = self._drain_deadline is not None  # draining: nothing waits for batch-mates
            choice = self.policy.next_batch(self._queues, self._computing, time.perf_counter(), flush)
            if isinstance(choice, Wait):
                try:
                    await asyncio.wait_for(self._wakeup.wait(), choice.seconds)
                except TimeoutError:
                    pass
                continue
            queue = self._queues[choice.key]
            batch = [queue.popleft() for _ in range(min(choice.size, len(queue)))]
            for entry in batch:
                entry.dequeued = True
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
        self.batch_time_s = inference_s if self.batch_time_s is None else (
            EMA_WEIGHT * inference_s + (1 - EMA_WEIGHT) * self.batch_time_s
        )
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
