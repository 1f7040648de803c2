"""The dynamic batcher on its own: plain Python work functions, no HTTP, no torch. Its policy
(which items form the next batch) is tested first as pure bookkeeping, then the mechanism.

Order is never assumed from a sleep: a batch that must still be running blocks on an event the
test releases, and the test waits for events or for the batcher's own state."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import NamedTuple

import pytest

from service.batcher import Batcher
from service.batching_policy import Dispatch, DynamicBatching, Wait
from service.errors import NotReady, QueueFull, QueueTimeout

WAIT_S = 30.0  # bound on every wait: a broken batcher fails the test, never hangs it


class Recorder:
    """A ``run_batch`` that records each batch and the thread it ran on; items that are
    ``"bad"`` make the whole batch raise, as a crashing model would. With ``release``, every
    batch sets ``started`` and then waits for ``release``, as a batch on a busy GPU would."""

    def __init__(self, delay_s: float = 0.0, release: threading.Event | None = None):
        self.batches: list[list] = []
        self.threads: set[str] = set()
        self.delay_s = delay_s
        self.started = threading.Event()
        self.release = release

    def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.threads.add(threading.current_thread().name)
        self.started.set()
        if self.release is not None:
            assert self.release.wait(WAIT_S), "the test never released the batch"
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


async def wait_event(event: threading.Event, what: str) -> None:
    assert await asyncio.to_thread(event.wait, WAIT_S), f"timed out waiting until {what}"


async def until_set(event: asyncio.Event, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), WAIT_S)
    except TimeoutError:
        pytest.fail(f"timed out waiting until {what}")


async def until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.001)


class Item(NamedTuple):
    enqueued: float


def queued_at(*times: float) -> list[Item]:
    return [Item(t) for t in times]


def test_policy_dispatches_a_full_group_at_once_the_one_with_the_oldest_item_first():
    policy = DynamicBatching(max_batch_size=2, max_delay_s=10.0, capacity=100)
    queues = {"partial": queued_at(0.0), "full-later": queued_at(2.0, 3.0), "full": queued_at(1.0, 4.0, 5.0)}
    assert policy.next_batch(queues, computing=0, now=5.0) == Dispatch("full", 2)
    assert policy.next_batch(queues, computing=1, now=5.0) == Dispatch("full", 2)


def test_policy_holds_a_partial_batch_until_its_oldest_item_is_due():
    policy = DynamicBatching(max_batch_size=4, max_delay_s=0.5, capacity=100)
    queues = {"a": queued_at(10.0, 10.1), "b": queued_at(10.2), "empty": []}
    choice = policy.next_batch(queues, computing=0, now=10.2)
    assert isinstance(choice, Wait) and choice.seconds == pytest.approx(0.3)
    assert policy.next_batch(queues, computing=0, now=10.5) == Dispatch("a", 2)


def test_policy_holds_a_partial_batch_that_is_not_due_while_another_computes_but_not_an_overdue_one():
    policy = DynamicBatching(max_batch_size=4, max_delay_s=1.0, capacity=100)
    queues = {"a": queued_at(10.0, 10.5)}
    assert policy.next_batch(queues, computing=1, now=10.6) == Wait(pytest.approx(0.4))
    assert policy.next_batch(queues, computing=1, now=11.0) == Dispatch("a", 2)


def test_policy_flush_sends_partial_groups_at_once_oldest_first():
    policy = DynamicBatching(max_batch_size=4, max_delay_s=60.0, capacity=100)
    queues = {"young": queued_at(5.0), "old": queued_at(1.0, 2.0)}
    assert isinstance(policy.next_batch(queues, computing=0, now=6.0), Wait)
    assert policy.next_batch(queues, computing=1, now=6.0, flush=True) == Dispatch("old", 2)


def test_policy_counts_what_finishes_within_a_window_on_a_virtual_clock():
    policy = DynamicBatching(max_batch_size=4, max_delay_s=60.0, capacity=100)
    ten = {"a": queued_at(*range(10))}
    # the computing batch frees the thread at 1.0; then [0-3] ends at 2.0, [4-7] at 3.0, [8, 9] at 4.0
    assert policy.finishing_within(ten, computing=1, concurrency=1, batch_s=1.0, window_s=3.5) == {"a": 8}
    assert policy.finishing_within(ten, computing=0, concurrency=1, batch_s=1.0, window_s=3.5) == {"a": 10}
    assert policy.finishing_within(ten, computing=1, concurrency=1, batch_s=1.0, window_s=0.5) == {"a": 0}
    # two threads: the oldest group and the next batch start together; a group's tail is late
    two = {"b": queued_at(2.0, 3.0, 4.0, 5.0, 6.0), "a": queued_at(1.0, 7.0, 8.0)}
    assert policy.finishing_within(two, computing=0, concurrency=2, batch_s=1.0, window_s=1.0) == {"a": 3, "b": 4}
    # one thread, room for one batch: the group holding the oldest item gets it
    assert policy.finishing_within(two, computing=0, concurrency=1, batch_s=1.0, window_s=1.5) == {"a": 3, "b": 0}
    assert policy.finishing_within({}, computing=0, concurrency=1, batch_s=1.0, window_s=1.0) == {}


def test_policy_admits_up_to_capacity_and_refuses_bad_settings():
    policy = DynamicBatching(max_batch_size=4, max_delay_s=0.0, capacity=3)
    policy.admit(2)
    with pytest.raises(QueueFull, match="3 images waiting"):
        policy.admit(3)
    for bad in [(0, 0.0, 3), (4, -1.0, 3), (4, 0.0, 0)]:
        with pytest.raises(ValueError, match="max_batch_size >= 1"):
            DynamicBatching(*bad)


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


class Watched(DynamicBatching):
    """The default policy, announcing each time it holds back a batch because another computes."""

    def __init__(self, *args):
        super().__init__(*args)
        self.held_back = asyncio.Event()

    def next_batch(self, queues, computing, now, flush=False):
        choice = super().next_batch(queues, computing, now, flush)
        if isinstance(choice, Wait) and computing:
            self.held_back.set()
        return choice


def test_while_a_batch_computes_a_partial_batch_waits_for_it_and_collects_new_arrivals():
    rec = Recorder(release=threading.Event())

    async def main():
        b = await started(make(rec, max_batch_size=3, max_delay_s=WAIT_S, concurrency=2, policy=Watched))
        first = [asyncio.ensure_future(b.submit("k", i)) for i in (1, 2, 3)]  # full: goes at once
        await wait_event(rec.started, "the first batch computes")
        rest = []
        for item in (4, 5):  # not due, and a thread is free, yet it waits for batch-mates
            b.policy.held_back.clear()
            rest.append(asyncio.ensure_future(b.submit("k", item)))
            await until_set(b.policy.held_back, f"item {item} is held back")
        rest.append(asyncio.ensure_future(b.submit("k", 6)))  # now full: runs on the second thread
        await until(lambda: len(rec.batches) == 2, "the second batch starts while the first computes")
        rec.release.set()
        outcomes = await asyncio.gather(*first, *rest)
        await b.stop()
        return outcomes

    outcomes = run(main())
    assert rec.batches == [[1, 2, 3], [4, 5, 6]]
    assert [o.batch_size for o in outcomes] == [3] * 6


def test_full_queue_raises_queue_full():
    async def main():
        rec = Recorder(release=threading.Event())
        b = await started(make(rec, max_batch_size=1, capacity=2, max_delay_s=0))
        tasks = [asyncio.ensure_future(b.submit("k", 0))]
        await wait_event(rec.started, "item 0 runs")
        tasks += [asyncio.ensure_future(b.submit("k", i)) for i in (1, 2)]
        await until(lambda: b.depth == 2, "items 1 and 2 are queued")
        with pytest.raises(QueueFull):
            await b.submit("k", 99)
        rec.release.set()
        results = await asyncio.gather(*tasks)
        await b.stop()
        return rec, results

    rec, results = run(main())
    assert [r.value for r in results] == ["result:0", "result:1", "result:2"]
    assert rec.batches == [[0], [1], [2]]


def test_timed_out_items_are_removed_and_never_run():
    async def main():
        rec = Recorder(release=threading.Event())
        b = await started(make(rec, max_batch_size=1, max_delay_s=0, timeout_s=0.2))
        first = asyncio.ensure_future(b.submit("k", "first"))
        await wait_event(rec.started, "the first item runs")
        with pytest.raises(QueueTimeout):
            await b.submit("k", "late")
        depth = b.depth
        rec.release.set()
        outcome = await first  # it also outlived the timeout, but had started: it gets its result
        await b.stop()
        return rec, depth, outcome

    rec, depth, outcome = run(main())
    assert depth == 0
    assert rec.batches == [["first"]] and outcome.value == "result:first"


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
        rec = Recorder(release=threading.Event())
        b = await started(make(rec, max_batch_size=1, max_delay_s=0))
        first = asyncio.ensure_future(b.submit("k", "first"))
        await wait_event(rec.started, "the first item runs")
        gone = asyncio.ensure_future(b.submit("k", "gone"))
        await until(lambda: b.depth == 1, "the second item is queued")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        depth = b.depth
        rec.release.set()
        await first
        await b.stop()  # waits for every batch the batcher started
        return rec, depth

    rec, depth = run(main())
    assert depth == 0 and rec.batches == [["first"]]


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


async def timed_batch(b: Batcher, rec: Recorder) -> None:
    """Run one batch so the batcher has measured a batch time (the drain's estimate needs one)."""
    rec.release.set()
    await asyncio.gather(*(b.submit("k", f"warm{i}") for i in range(b.policy.max_batch_size)))
    assert b.batch_time_s is not None and b.batch_time_s > 0
    rec.release.clear()
    rec.started.clear()


def test_drain_refuses_at_once_what_cannot_finish_in_the_window_and_runs_the_rest():
    rec = Recorder(delay_s=0.02, release=threading.Event())

    async def main():
        b = await started(make(rec, max_batch_size=2, max_delay_s=WAIT_S, timeout_s=WAIT_S))
        await timed_batch(b, rec)
        computing = [asyncio.ensure_future(b.submit("k", i)) for i in (0, 1)]
        await wait_event(rec.started, "a batch computes")
        queued = [asyncio.ensure_future(b.submit("k", i)) for i in range(2, 11)]
        await until(lambda: b.depth == 9, "nine items are queued")
        # the computing batch ends within one batch time, the next at two, the one after at three
        b.drain(2.5 * b.batch_time_s)
        await until(lambda: sum(f.done() for f in queued) == 7, "the late ones are refused")
        refused = [f for f in queued if f.done()]
        rec.release.set()  # only now does any held batch go on
        kept = await asyncio.gather(*computing, *(f for f in queued if f not in refused))
        await b.stop()
        return refused, kept

    refused, kept = run(main())
    assert [o.value for o in kept] == [f"result:{i}" for i in range(4)]  # the oldest ones, in order
    for f in refused:
        with pytest.raises(NotReady, match="draining"):
            f.result()
    assert rec.batches[1:] == [[0, 1], [2, 3]]


def test_draining_flushes_partial_batches_and_refuses_late_arrivals():
    rec = Recorder(release=threading.Event())

    async def main():
        b = await started(make(rec, max_batch_size=4, max_delay_s=600.0, timeout_s=WAIT_S))
        await timed_batch(b, rec)
        rec.release.set()
        partial = [asyncio.ensure_future(b.submit(key, key)) for key in ("a", "b")]
        await until(lambda: b.depth == 2, "two partial groups wait for batch-mates (10 minutes)")
        b.drain(WAIT_S)  # nothing more is coming: they go now
        flushed = await asyncio.gather(*partial)
        b.drain(0.0)  # the window has closed: a late arrival cannot finish in it
        with pytest.raises(NotReady):
            await b.submit("a", "late")
        await b.stop()
        return flushed

    assert [o.value for o in run(main())] == ["result:a", "result:b"]
    assert rec.batches[1:] == [["a"], ["b"]]


def test_drain_keeps_everything_until_a_batch_was_timed_and_refuse_queued_ends_it():
    rec = Recorder(release=threading.Event())

    async def main():
        b = await started(make(rec, max_batch_size=1, max_delay_s=0, timeout_s=WAIT_S))
        first = asyncio.ensure_future(b.submit("k", "first"))
        await wait_event(rec.started, "the first batch computes")
        queued = [asyncio.ensure_future(b.submit("k", i)) for i in range(3)]
        await until(lambda: b.depth == 3, "three items are queued")
        b.drain(0.001)  # no batch time measured yet: no estimate, nothing refused
        depth_after_drain = b.depth
        refused = b.refuse_queued()  # the window closed with them still queued
        results = await asyncio.gather(*queued, return_exceptions=True)
        rec.release.set()
        outcome = await first  # the computing batch still finishes
        await b.stop()
        return depth_after_drain, refused, results, outcome

    depth_after_drain, refused, results, outcome = run(main())
    assert depth_after_drain == 3 and refused == 3
    assert all(isinstance(r, NotReady) for r in results)
    assert outcome.value == "result:first" and rec.batches == [["first"]]
