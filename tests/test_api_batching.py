"""search_api.batching.MicroBatcher: batching policy, threads, errors, cancellation, lifecycle.

Real threads and real time throughout (no mocks), each test in fresh ``asyncio.run`` loops
with a deadline; time bounds are generous because the test machine is small and shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time

import pytest

from search_api.batching import BatcherStats, MicroBatcher


def run(coro, timeout: float = 10.0):
    """``asyncio.run`` with a deadline, so that a hang fails the test instead of stalling the suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Recorder:
    """A batch function that records every call: sizes, items, threads, overlap."""

    def __init__(self, sleep: float = 0.0, per_item: float = 0.0) -> None:
        self.sleep = sleep
        self.per_item = per_item
        self.calls: list[list[int]] = []
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._active = 0
        self.max_active = 0

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]

    def __call__(self, items: list[int]) -> list[int]:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self.calls.append(list(items))
            self.threads.append(threading.current_thread())
        try:
            time.sleep(self.sleep + self.per_item * len(items))
            return [x * 10 for x in items]
        finally:
            with self._lock:
                self._active -= 1


async def _burst(batcher: MicroBatcher, items) -> list:
    return await asyncio.gather(*(batcher.submit(x) for x in items))


def test_concurrent_submits_are_batched_and_results_stay_in_order() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20, name="t-order")

    async def main():
        try:
            return await _burst(batcher, range(16))
        finally:
            await batcher.close()

    results = run(main())
    assert results == [x * 10 for x in range(16)]
    assert sum(fn.sizes) == 16
    assert max(fn.sizes) <= 8
    assert len(fn.calls) <= 4
    assert sorted(x for c in fn.calls for x in c) == list(range(16))


def test_max_batch_one_disables_batching() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=1, max_wait_ms=20, name="t-one")

    async def main():
        try:
            return await _burst(batcher, range(16))
        finally:
            await batcher.close()

    assert run(main()) == [x * 10 for x in range(16)]
    assert fn.sizes == [1] * 16


def test_lone_request_waits_about_max_wait() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=30, name="t-lone")

    async def main():
        await batcher.submit(0)  # warm up: worker task and executor thread exist
        start = time.perf_counter()
        result = await batcher.submit(1)
        elapsed = time.perf_counter() - start
        await batcher.close()
        return result, elapsed

    result, elapsed = run(main())
    assert result == 10
    assert 0.025 <= elapsed < 0.3, elapsed
    assert fn.sizes == [1, 1]


def test_fn_runs_off_the_loop_and_never_concurrently() -> None:
    fn = Recorder(sleep=0.01)
    batcher = MicroBatcher(fn, max_batch=2, max_wait_ms=1, name="t-thread")

    async def main():
        loop_thread = threading.current_thread()
        # Two waves so that the second finds the model busy with the first.
        first = asyncio.gather(*(batcher.submit(x) for x in range(6)))
        await asyncio.sleep(0.005)
        second = await _burst(batcher, range(6, 12))
        await batcher.close()
        return loop_thread, await first + second

    loop_thread, results = run(main())
    assert results == [x * 10 for x in range(12)]
    assert len(fn.calls) >= 6  # max_batch=2
    assert all(t is not loop_thread for t in fn.threads)
    assert all(t.name.startswith("t-thread") for t in fn.threads)
    assert fn.max_active == 1


def test_batching_raises_throughput_when_cost_is_per_call() -> None:
    def timed(max_batch: int) -> float:
        fn = Recorder(sleep=0.01, per_item=0.0002)
        batcher = MicroBatcher(fn, max_batch=max_batch, max_wait_ms=2, name=f"t-tp{max_batch}")

        async def main():
            start = time.perf_counter()
            results = await _burst(batcher, range(64))
            elapsed = time.perf_counter() - start
            await batcher.close()
            assert results == [x * 10 for x in range(64)]
            return elapsed

        return run(main())

    unbatched = timed(1)
    batched = timed(16)
    assert batched * 3 <= unbatched, (batched, unbatched)


def test_fn_error_reaches_every_submitter_of_the_batch_and_batcher_survives() -> None:
    calls: list[list[int]] = []

    def fn(items: list[int]) -> list[int]:
        calls.append(list(items))
        if any(x < 0 for x in items):
            raise ValueError("bad item")
        return [x + 1 for x in items]

    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20, name="t-err")

    async def main():
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in [1, 2, -3, 4]), return_exceptions=True)
        later = await batcher.submit(5)
        await batcher.close()
        return outcomes, later

    outcomes, later = run(main())
    assert len(calls[0]) == 4  # one batch
    assert all(isinstance(o, ValueError) and str(o) == "bad item" for o in outcomes)
    assert later == 6


def test_wrong_result_count_is_a_runtime_error() -> None:
    def fn(items: list[int]) -> list[int]:
        return [0] * (len(items) + 1)

    batcher = MicroBatcher(fn, max_batch=4, max_wait_ms=10, name="t-count")

    async def main():
        outcomes = await asyncio.gather(*(batcher.submit(x) for x in range(3)), return_exceptions=True)
        await batcher.close()
        return outcomes

    outcomes = run(main())
    assert len(outcomes) == 3
    for o in outcomes:
        assert isinstance(o, RuntimeError)
        assert "4 results" in str(o) and "3 items" in str(o)


def test_cancelled_submitters_do_not_break_others() -> None:
    fn = Recorder(sleep=0.15)
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=5, name="t-cancel")

    async def main():
        # a gives up while its batch (shared with b) is running in fn.
        a = asyncio.create_task(asyncio.wait_for(batcher.submit(1), timeout=0.03))
        b = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.05)  # the first batch [1, 2] is now inside fn
        # c gives up while still queued behind that batch; d waits normally.
        c = asyncio.create_task(asyncio.wait_for(batcher.submit(3), timeout=0.02))
        d = asyncio.create_task(batcher.submit(4))
        outcomes = await asyncio.gather(a, b, c, d, return_exceptions=True)
        later = await batcher.submit(5)
        await batcher.close()
        return outcomes, later

    (a, b, c, d), later = run(main())
    assert isinstance(a, TimeoutError)
    assert b == 20
    assert isinstance(c, TimeoutError)
    assert d == 40
    assert later == 50
    assert sorted(fn.calls[0]) == [1, 2]  # a and b shared the first batch
    assert all(3 not in call for call in fn.calls)  # dropped before running
    assert batcher.stats.items == 4


def test_close_finishes_queued_work_and_refuses_new_items() -> None:
    fn = Recorder(sleep=0.01)
    batcher = MicroBatcher(fn, max_batch=2, max_wait_ms=1, name="t-close-owned")

    async def main():
        tasks = [asyncio.create_task(batcher.submit(x)) for x in range(8)]
        await asyncio.sleep(0)  # all eight are queued; at most one batch has started
        await batcher.close()
        assert all(t.done() for t in tasks)
        results = [t.result() for t in tasks]
        with pytest.raises(RuntimeError, match="is closed"):
            await batcher.submit(99)
        await batcher.close()  # idempotent
        return results

    assert run(main()) == [x * 10 for x in range(8)]
    assert sum(fn.sizes) == 8
    # The owned executor was shut down and its thread joined.
    assert not any(t.name.startswith("t-close-owned") for t in threading.enumerate())


def test_close_leaves_a_caller_executor_running() -> None:
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        batcher = MicroBatcher(Recorder(), max_batch=4, executor=pool, name="t-close-ext")

        async def main():
            value = await batcher.submit(3)
            await batcher.close()
            return value

        assert run(main()) == 30
        assert pool.submit(lambda: 7).result(timeout=5) == 7


def test_created_outside_a_loop_and_used_from_sequential_loops_in_two_threads() -> None:
    fn = Recorder()
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=5, name="t-loops")  # no loop running here

    async def session(items: range) -> list:
        results = await _burst(batcher, items)
        # A lone request after the burst makes the worker wait on an empty queue, which
        # only works if the queue belongs to this loop (asyncio.Queue binds to one loop).
        results.append(await batcher.submit(items[-1] + 100))
        return results

    first = run(session(range(8)))
    # The second loop runs in another thread, as starlette's TestClient runs the app.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as other_thread:
        second = other_thread.submit(run, session(range(8, 16))).result(timeout=20)
    assert first == [x * 10 for x in range(8)] + [1070]
    assert second == [x * 10 for x in range(8, 16)] + [1150]
    assert sum(fn.sizes) == 18 and len(fn.calls) <= 6
    run(batcher.close())  # from a third loop: the old ones are closed
    with pytest.raises(RuntimeError, match="is closed"):
        run(batcher.submit(1))


def test_stats_and_on_batch() -> None:
    fn = Recorder(sleep=0.005)
    seen: list[tuple[int, float]] = []
    batcher = MicroBatcher(fn, max_batch=8, max_wait_ms=20, name="t-stats", on_batch=lambda n, s: seen.append((n, s)))
    assert batcher.stats == BatcherStats(batches=0, items=0, max_batch_seen=0, mean_batch=0.0)

    async def main():
        await _burst(batcher, range(20))
        await batcher.close()

    run(main())
    stats = batcher.stats
    assert stats.batches == len(fn.calls) and stats.batches <= 5
    assert stats.items == 20
    assert stats.max_batch_seen == max(fn.sizes) == 8
    assert stats.mean_batch == pytest.approx(20 / stats.batches)
    assert [n for n, _ in seen] == fn.sizes
    assert all(0.004 <= s < 1.0 for _, s in seen)


def test_on_batch_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    def on_batch(n: int, seconds: float) -> None:
        raise ValueError("metrics down")

    batcher = MicroBatcher(Recorder(), max_batch=4, max_wait_ms=1, name="t-onbatch", on_batch=on_batch)

    async def main():
        results = [await batcher.submit(1), await batcher.submit(2)]
        await batcher.close()
        return results

    with caplog.at_level(logging.ERROR, logger="search_api.batching"):
        assert run(main()) == [10, 20]
    assert sum("on_batch" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("kwargs", [{"max_batch": 0}, {"max_batch": 2.5}, {"max_wait_ms": -1}])
def test_invalid_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(lambda items: items, **kwargs)
