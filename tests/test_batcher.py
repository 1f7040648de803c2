"""The dynamic batcher on its own: plain Python work functions, no HTTP, no torch."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.batcher import Batcher
from service.errors import QueueFull, QueueTimeout


class Recorder:
    """A ``run_batch`` that records each batch and the thread it ran on; items that are
    ``"bad"`` make the whole batch raise, as a crashing model would."""

    def __init__(self, delay_s: float = 0.0):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)
        if "bad" in items:
            raise ValueError("bad item in batch")
        return [f"result:{item}" for item in items]


def make(run, **kw) -> Batcher:
    options = dict(max_batch_size=4, max_delay_s=0.05, capacity=100, timeout_s=5.0)
    return Batcher(run, **{**options, **kw})


async def started(batcher: Batcher) -> Batcher:
    batcher.start()
    return batcher


def run(coro):
    return asyncio.run(coro)


def test_each_caller_gets_its_own_result_and_batches_fill_to_max_size():
    async def main():
        rec = Recorder(delay_s=0.05)
        b = await started(make(rec))
        outcomes = await asyncio.gather(*(b.submit("k", i) for i in range(10)))
        await b.stop()
        return rec, outcomes

    rec, outcomes = run(main())
    assert [o.value for o in outcomes] == [f"result:{i}" for i in range(10)]
    assert [len(batch) for batch in rec.batches] == [4, 4, 2]
    assert sorted(x for batch in rec.batches for x in batch) == list(range(10))
    assert [o.batch_size for o in outcomes] == [4] * 8 + [2] * 2


def test_a_lone_request_waits_max_delay_then_runs_alone():
    async def main():
        rec = Recorder()
        b = await started(make(rec, max_delay_s=0.2))
        t0 = time.perf_counter()
        outcome = await b.submit("k", "x")
        elapsed = time.perf_counter() - t0
        await b.stop()
        return rec, outcome, elapsed

    rec, outcome, elapsed = run(main())
    assert rec.batches == [["x"]]
    assert 0.18 <= elapsed < 2.0 and outcome.queue_s >= 0.18


def test_a_full_batch_does_not_wait_for_the_delay():
    async def main():
        rec = Recorder()
        b = await started(make(rec, max_batch_size=3, max_delay_s=10.0))
        t0 = time.perf_counter()
        await asyncio.gather(*(b.submit("k", i) for i in range(3)))
        elapsed = time.perf_counter() - t0
        await b.stop()
        return elapsed

    assert run(main()) < 5.0


def test_batches_never_mix_keys():
    async def main():
        rec = Recorder()
        b = await started(make(rec, max_batch_size=8))
        items = [("a" if i % 2 else "b", i) for i in range(12)]
        outcomes = await asyncio.gather(*(b.submit(k, (k, i)) for k, i in items))
        await b.stop()
        return rec, items, outcomes

    rec, items, outcomes = run(main())
    assert [o.value for o in outcomes] == [f"result:{it}" for it in items]
    for batch in rec.batches:
        assert len({key for key, _ in batch}) == 1


def test_inference_runs_on_one_dedicated_thread_not_the_event_loop():
    async def main():
        rec = Recorder()
        b = await started(make(rec, max_batch_size=1))
        await asyncio.gather(*(b.submit("k", i) for i in range(3)))
        await b.stop()
        return rec

    rec = run(main())
    assert len(rec.threads) == 1 and next(iter(rec.threads)).startswith("inference")


def test_with_concurrency_two_two_batches_run_at_once_on_two_threads():
    barrier = threading.Barrier(2, timeout=10)
    threads = set()

    def run_batch(items):
        threads.add(threading.current_thread().name)
        barrier.wait()  # passes only while another batch is running at the same time
        return [f"result:{item}" for item in items]

    async def main():
        b = await started(make(run_batch, max_batch_size=2, max_delay_s=0, concurrency=2))
        outcomes = await asyncio.gather(*(b.submit("k", i) for i in range(4)))
        await b.stop()
        return outcomes

    outcomes = run(main())
    assert [o.value for o in outcomes] == [f"result:{i}" for i in range(4)]
    assert len(threads) == 2


def test_while_a_batch_computes_a_partial_batch_waits_for_it_and_collects_new_arrivals():
    release = threading.Event()
    rec = Recorder()

    def run_batch(items):
        if 1 in items:
            release.wait(10)  # the GPU is busy with the first batch
        return rec(items)

    async def main():
        b = await started(make(run_batch, max_batch_size=4, max_delay_s=0, concurrency=2))
        first = asyncio.ensure_future(b.submit("k", 1))
        await asyncio.sleep(0.05)
        rest = [asyncio.ensure_future(b.submit("k", 2))]
        await asyncio.sleep(0.1)  # item 2 is overdue, but a batch is computing: it waits
        rest.append(asyncio.ensure_future(b.submit("k", 3)))
        await asyncio.sleep(0.1)
        release.set()
        outcomes = await asyncio.gather(first, *rest)
        await b.stop()
        return outcomes

    outcomes = run(main())
    assert rec.batches == [[1], [2, 3]]
    assert [o.batch_size for o in outcomes] == [1, 2, 2]


def test_full_queue_raises_queue_full():
    async def main():
        rec = Recorder(delay_s=0.3)
        b = await started(make(rec, max_batch_size=1, capacity=2, max_delay_s=0))
        tasks = [asyncio.ensure_future(b.submit("k", 0))]
        await asyncio.sleep(0.05)  # item 0 running
        tasks += [asyncio.ensure_future(b.submit("k", i)) for i in (1, 2)]
        await asyncio.sleep(0.05)  # items 1 and 2 queued
        with pytest.raises(QueueFull):
            await b.submit("k", 99)
        results = await asyncio.gather(*tasks)
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert [r.value for r in results] == ["result:0", "result:1", "result:2"]
    assert 99 not in [x for batch in rec.batches for x in batch]


def test_timed_out_items_are_removed_and_never_run():
    async def main():
        rec = Recorder(delay_s=0.5)
        b = await started(make(rec, max_batch_size=1, max_delay_s=0, timeout_s=0.2))
        first = asyncio.ensure_future(b.submit("k", "first"))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueTimeout):
            await b.submit("k", "late")
        depth = b.depth
        await first
        await asyncio.sleep(0.1)
        await b.stop()
        return rec, depth

    rec, depth = run(main())
    assert depth == 0
    assert rec.batches == [["first"]]


def test_an_item_already_running_past_its_timeout_still_gets_its_result():
    async def main():
        rec = Recorder(delay_s=0.4)
        b = await started(make(rec, max_delay_s=0, timeout_s=0.1))
        outcome = await b.submit("k", "slow")
        await b.stop()
        return outcome

    assert run(main()).value == "result:slow"


def test_cancelled_callers_are_dropped_before_their_batch_starts():
    async def main():
        rec = Recorder(delay_s=0.3)
        b = await started(make(rec, max_batch_size=1, max_delay_s=0))
        first = asyncio.ensure_future(b.submit("k", "first"))
        await asyncio.sleep(0.05)
        gone = asyncio.ensure_future(b.submit("k", "gone"))
        await asyncio.sleep(0.05)
        gone.cancel()
        await first
        await asyncio.sleep(0.4)
        await b.stop()
        return rec, b.depth

    rec, depth = run(main())
    assert rec.batches == [["first"]] and depth == 0


def test_a_failing_batch_is_retried_item_by_item_so_only_the_culprit_fails():
    async def main():
        rec = Recorder()
        b = await started(make(rec, max_batch_size=4))
        results = await asyncio.gather(*(b.submit("k", x) for x in ["a", "bad", "c", "d"]), return_exceptions=True)
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert rec.batches[0] == ["a", "bad", "c", "d"]
    assert [r.value for r in results if not isinstance(r, Exception)] == ["result:a", "result:c", "result:d"]
    assert isinstance(results[1], ValueError)


def test_on_batch_reports_size_and_time():
    seen = []

    async def main():
        b = await started(make(Recorder(delay_s=0.05), on_batch=lambda n, s: seen.append((n, s))))
        await asyncio.gather(*(b.submit("k", i) for i in range(4)))
        await b.stop()

    run(main())
    assert [n for n, _ in seen] == [4] and seen[0][1] >= 0.05
