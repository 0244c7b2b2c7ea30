"""Micro-batching of concurrent model calls.

Concurrent search requests each need one encoder call. Run one by one, they waste the
batch dimension; :class:`MicroBatcher` gathers the requests that arrive together into one
call of ``fn`` so throughput grows with load, while a lone request waits at most
``max_wait_ms`` before its (batch of one) call starts.

Policy: one worker task per event loop takes the first queued item, then keeps taking
items until it holds ``max_batch`` of them or ``max_wait_ms`` has passed since it took the
first. It then runs ``fn(items)`` in the executor (never on the event loop) and hands each
submitter its own result. While ``fn`` is busy, new requests queue up, so under load the
next batch is already full and starts without waiting. Model calls are serialised: the
worker awaits each call before gathering the next batch, and the default executor has a
single thread (torch already uses every core within one call).

Loops: the batcher may be created outside any event loop (an app factory) and binds its
queue and worker to the running loop on the first :meth:`~MicroBatcher.submit`. If a later
submit comes from a different loop (``asyncio.run`` twice, or starlette's ``TestClient``,
which runs the app in a loop of its own), the batcher rebinds to that loop. One loop at a
time is supported: requests still waiting in a loop that has been closed are lost with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["BatcherStats", "MicroBatcher"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class BatcherStats:
    """Counts over every ``fn`` call so far (failed calls included)."""

    batches: int = 0
    items: int = 0
    max_batch_seen: int = 0
    mean_batch: float = 0.0


@dataclass(slots=True)
class _Entry:
    item: Any
    future: asyncio.Future


_STOP = object()  # queue sentinel put by close(): finish what is ahead of it, then exit


class MicroBatcher(Generic[T, R]):
    """Gather concurrent :meth:`submit` calls into batched calls of ``fn``.

    ``fn`` runs in the executor on a list of items and returns one result per item, in
    order. ``executor`` defaults to a private single-thread pool owned (and shut down on
    :meth:`close`) by the batcher; a caller-supplied executor is never shut down. If it has
    more than one thread, calls from one loop are still serialised. ``on_batch(size,
    seconds_in_fn)`` is called on the event loop after each ``fn`` call (failed ones too);
    its exceptions are logged, never raised. ``max_batch=1`` disables batching.
    """

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        *,
        max_batch: int = 32,
        max_wait_ms: float = 2.0,
        executor: concurrent.futures.Executor | None = None,
        name: str = "batcher",
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ValueError(f"max_batch must be an int >= 1, got {max_batch!r}")
        if not max_wait_ms >= 0:  # also rejects NaN
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait_ms = float(max_wait_ms)
        self.name = name
        self.on_batch = on_batch
        self._owns_executor = executor is None
        self._executor: concurrent.futures.Executor = executor or concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name
        )
        self._closed = False
        self._executor_shut = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._batches = 0
        self._items = 0
        self._max_seen = 0

    # ------------------------------------------------------------------ public API

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def stats(self) -> BatcherStats:
        return BatcherStats(
            batches=self._batches,
            items=self._items,
            max_batch_seen=self._max_seen,
            mean_batch=self._items / self._batches if self._batches else 0.0,
        )

    async def submit(self, item: T) -> R:
        """Queue ``item``; return its result (or raise ``fn``'s exception) once its batch ran."""
        if self._closed:
            raise RuntimeError(f"{self.name} is closed")
        loop = asyncio.get_running_loop()
        queue = self._ensure_worker(loop)
        future: asyncio.Future = loop.create_future()
        queue.put_nowait(_Entry(item, future))
        # If this task is cancelled, awaiting cancels ``future`` too: the worker then skips it.
        return await future

    async def close(self) -> None:
        """Refuse new items, finish the queued ones, stop the worker, shut down an owned executor.

        Idempotent. Call it from the loop the batcher is serving (e.g. the app's lifespan);
        called from another loop, it stops the worker of a bound loop that is still running
        (in another thread) and simply forgets one that is closed.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        bound = self._loop
        if bound is loop:
            await self._drain_and_stop()
        elif bound is not None and not bound.is_closed() and bound.is_running():
            done = asyncio.run_coroutine_threadsafe(self._drain_and_stop(), bound)
            await asyncio.wrap_future(done)
        if self._owns_executor and not self._executor_shut:
            self._executor_shut = True
            # wait=True joins the (idle) thread; done off the loop in case a call is still running.
            await asyncio.to_thread(self._executor.shutdown, True)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<MicroBatcher {self.name!r} max_batch={self.max_batch} max_wait_ms={self.max_wait_ms} {state}>"

    # ------------------------------------------------------------------ internals

    def _ensure_worker(self, loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
        if self._loop is not loop or self._queue is None:
            # First use, or a new loop: whatever was bound to an old loop stays with it.
            self._loop = loop
            self._queue = asyncio.Queue()
            self._worker = None
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._run(self._queue), name=f"{self.name}-worker")
        return self._queue

    async def _drain_and_stop(self) -> None:
        """Runs in the bound loop: let the worker finish the queue up to a stop sentinel."""
        loop = asyncio.get_running_loop()
        queue = self._queue
        if queue is None:
            return
        if self._worker is None or self._worker.done():
            if queue.empty():
                return
            self._worker = loop.create_task(self._run(queue), name=f"{self.name}-worker")
        queue.put_nowait(_STOP)
        # Shielded: cancelling close() must not cancel the work that submitters wait on.
        await asyncio.shield(self._worker)

    async def _run(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        max_wait = self.max_wait_ms / 1000.0
        stop = False
        while not stop:
            first = await queue.get()
            if first is _STOP:
                return
            if first.future.done():  # submitter already gone (cancelled)
                continue
            batch: list[_Entry] = [first]
            try:
                deadline = loop.time() + max_wait
                while len(batch) < self.max_batch:
                    try:
                        entry = queue.get_nowait()
                    except asyncio.QueueEmpty:
                        remaining = deadline - loop.time()
                        if remaining <= 0:
                            break
                        try:
                            entry = await asyncio.wait_for(queue.get(), remaining)
                        except TimeoutError:
                            break
                    if entry is _STOP:
                        stop = True
                        break
                    if not entry.future.done():
                        batch.append(entry)
                await self._process(loop, batch)
            except BaseException as exc:
                # The worker itself is going away (loop shutdown): nobody will serve this batch.
                for entry in batch:
                    if not entry.future.done():
                        if isinstance(exc, asyncio.CancelledError):
                            entry.future.cancel()
                        else:
                            entry.future.set_exception(exc)
                raise

    def _call(self, items: list[T]) -> tuple[Sequence[R] | None, BaseException | None, float]:
        """Runs in the executor thread: call ``fn`` and check its output."""
        start = time.perf_counter()
        try:
            results = self.fn(items)
            if not (hasattr(results, "__len__") and hasattr(results, "__getitem__")):
                results = list(results)
            n = len(results)
            if n != len(items):
                raise RuntimeError(f"{self.name}: fn returned {n} results for a batch of {len(items)} items")
            return results, None, time.perf_counter() - start
        except Exception as exc:  # delivered to every submitter of the batch
            return None, exc, time.perf_counter() - start

    async def _process(self, loop: asyncio.AbstractEventLoop, batch: list[_Entry]) -> None:
        live = [entry for entry in batch if not entry.future.done()]
        if not live:
            return
        items = [entry.item for entry in live]
        try:
            results, error, seconds = await loop.run_in_executor(self._executor, self._call, items)
            called = True
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # fn never ran, e.g. the executor was shut down under us
            results, error, seconds, called = None, exc, 0.0, False
        if called:
            self._batches += 1
            self._items += len(items)
            self._max_seen = max(self._max_seen, len(items))
        for i, entry in enumerate(live):
            if entry.future.done():  # cancelled while fn ran
                continue
            if error is not None:
                entry.future.set_exception(error)
            else:
                entry.future.set_result(results[i])  # type: ignore[index]
        if called and self.on_batch is not None:
            try:
                self.on_batch(len(items), seconds)
            except Exception:
                logger.exception("%s: on_batch callback failed", self.name)
