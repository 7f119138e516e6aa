"""Micro-batching: concurrent queries share one tower call and one FAISS search.

Requests put a :class:`~serving.retrieval.Query` on an asyncio queue and await
a future. One collector task takes the first waiting query, then keeps
collecting for at most ``max_wait_ms`` (or until ``max_size``), and hands the
batch to a single worker thread, so TensorFlow and FAISS never block the event
loop and never compete with each other for the 2 cores. While that thread
works, new queries pile up and form the next batch: batches grow with load.
A lone request (announced with :meth:`Batcher.incoming`, nothing queued or
running, nobody else announced) skips all that and is answered in the event
loop's thread: at low load the hand-offs cost more than the search, and there
is nothing for the loop to do meanwhile.

Failures stay with the query that caused them: when a batch fails, each of its
queries is answered alone, so one bad query (or one broken model version in a
batch that spans a hot reload) fails only itself. The collector loop survives
any exception of a batch or of ``on_batch``; should the task still end, it is
restarted (up to ``MAX_RESTARTS`` times in ``RESTART_WINDOW_S``, after which
:attr:`Batcher.alive` is False and ``/readyz`` reports it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.cancel import cancel_task
from serving.retrieval import Demotion, Query, Result, run_batch

log = logging.getLogger(__name__)

#: The collector task is restarted at most this many times per window, then left dead.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0

Pending = tuple[Query, "asyncio.Future[Result]"]


def run_isolated(
    queries: Sequence[Query], demotion: Demotion = Demotion()
) -> list[Result | Exception]:
    """:func:`run_batch`, or when the batch fails, each query alone (blocking; worker thread).

    Returns one entry per query: its result, or the exception that query raised alone.
    """
    try:
        results: list[Result | Exception] = list(run_batch(queries, demotion))
        if len(results) != len(queries):
            raise RuntimeError(f"run_batch returned {len(results)} results for {len(queries)}")
        return results
    except Exception as exc:
        if len(queries) == 1:
            return [exc]
        log.exception("batch of %d failed; answering its queries one by one", len(queries))
    out: list[Result | Exception] = []
    for q in queries:
        try:
            out.append(run_batch([q], demotion)[0])
        except Exception as exc:
            out.append(exc)
    return out


class BatcherClosed(RuntimeError):
    """The batcher was stopped; no more queries are answered."""


class Arrival:
    """A request announced to the batcher; ``landed()`` once its query is queued (idempotent)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._landed = False

    @property
    def is_landed(self) -> bool:
        return self._landed

    def landed(self) -> None:
        if not self._landed:
            self._landed = True
            self._batcher.arriving -= 1


class Batcher:
    """Collects queries into batches and answers them in one worker thread.

    Args:
      max_size: most queries per batch (1 disables batching).
      max_wait_ms: longest wait for more queries after the first one (ms; 0 = take what is queued).
      demotion: soft-demotion parameters passed to :func:`run_batch`.
      on_batch: called with the batch size after each batch (metrics; its errors are logged).
      on_restart: called when the collector task had died and was restarted (metrics).
      inline_when_idle: answer a lone announced query in the calling thread (see :meth:`submit`).
    """

    def __init__(
        self,
        max_size: int = 64,
        max_wait_ms: float = 1.0,
        demotion: Demotion = Demotion(),
        on_batch: Callable[[int], Any] | None = None,
        on_restart: Callable[[], Any] | None = None,
        inline_when_idle: bool = True,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.demotion = demotion
        self.on_batch = on_batch
        self.on_restart = on_restart
        self.inline_when_idle = inline_when_idle
        self._queue: asyncio.Queue[Pending] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._inflight: list[Pending] = []
        self._restarts: list[float] = []
        self._running = False  # between start() and stop(), unless the loop was given up on
        self.batches = 0
        self.queries = 0
        self.last_error: str | None = None
        # Requests that will submit soon (reading the store): worth waiting for.
        self.arriving = 0

    @property
    def executor(self) -> ThreadPoolExecutor:
        """The single worker thread (also used for other blocking model work)."""
        if self._executor is None:
            raise BatcherClosed("batcher is not running")
        return self._executor

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="twotower-batch")
        self._running = True
        self._spawn()

    def _spawn(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="twotower-batcher")
        self._task.add_done_callback(self._on_done)

    def _on_done(self, task: asyncio.Task[None]) -> None:
        if task is not self._task or task.cancelled():
            return  # stopped on purpose (or replaced)
        exc = task.exception()
        self.last_error = f"{type(exc).__name__}: {exc}" if exc else "collector task returned"
        log.error("batcher task died (%s)", self.last_error, exc_info=exc)
        self._fail_inflight(BatcherClosed(f"batcher task died: {self.last_error}"))
        now = time.monotonic()
        self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(self._restarts) > MAX_RESTARTS:
            log.critical(
                "batcher died %d times in %.0fs: not restarting (readiness fails)",
                len(self._restarts),
                RESTART_WINDOW_S,
            )
            self._running = False
            self._fail_queued(BatcherClosed(f"batcher task died: {self.last_error}"))
            return
        self._spawn()
        if self.on_restart is not None:
            self.on_restart()

    @property
    def alive(self) -> bool:
        """True between start and stop, unless the collector kept dying and was given up on.

        (Between a death and its restart, queued queries simply wait for the new task.)
        """
        return self._running

    def _fail_inflight(self, exc: Exception) -> None:
        for _q, fut in self._inflight:
            if not fut.done():
                fut.set_exception(exc)
        self._inflight = []

    def _fail_queued(self, exc: Exception) -> None:
        if self._queue is None:
            return
        while not self._queue.empty():
            _q, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(exc)

    async def stop(self) -> None:
        self._running = False
        task, self._task = self._task, None
        if task is not None and not task.done():  # a dead task's error was logged already
            await cancel_task(task)
        self._fail_inflight(BatcherClosed("server is shutting down"))
        self._fail_queued(BatcherClosed("server is shutting down"))
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @contextlib.contextmanager
    def incoming(self) -> Iterator[Arrival]:
        """Announce a request that will submit a query shortly (e.g. after reading the store).

        The collector waits up to ``max_wait_ms`` only while announced queries are on
        their way, so a lone request (concurrency 1) is dispatched at once.
        """
        arrival = Arrival(self)
        self.arriving += 1
        try:
            yield arrival
        finally:
            arrival.landed()

    async def submit(self, query: Query, arrival: Arrival | None = None) -> Result:
        """Answer one query (awaits its batch); ``arrival`` is the announcement from :meth:`incoming`.

        An announced query that finds the batcher idle (no batch queued, collecting or
        running) and nobody else announced is answered at once in this thread: a batch
        of one, without the queue, the collector's wake-up and the worker thread's two
        hand-offs (at low load those cost more than the search itself).
        """
        if self._queue is None or not self.alive:
            raise BatcherClosed(f"batcher is not running ({self.last_error or 'stopped'})")
        if arrival is not None and self._alone(arrival):
            arrival.landed()
            (res,) = run_isolated([query], self.demotion)
            self._count(1)
            if isinstance(res, Exception):
                raise res
            return res
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((query, fut))
        if arrival is not None:
            arrival.landed()
        return await fut

    def _alone(self, arrival: Arrival) -> bool:
        """Idle, and no other request announced: nothing to batch with, now or soon."""
        others = self.arriving - (0 if arrival.is_landed else 1)
        return (
            self.inline_when_idle
            and others <= 0
            and not self._inflight
            and self._queue is not None
            and self._queue.empty()
        )

    def _count(self, size: int) -> None:
        self.batches += 1
        self.queries += size
        if self.on_batch is not None:
            try:
                self.on_batch(size)
            except Exception:
                log.exception("batch callback failed (ignored)")

    async def _collect(self) -> list[Pending]:
        assert self._queue is not None
        batch = [await self._queue.get()]
        # Visible to stop() and to the restart path from now on: a query taken off the
        # queue is never left unanswered, whatever ends this task.
        self._inflight = batch
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self.arriving <= 0:
                break  # out of time, or nobody else is on the way: do not wait for nothing
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except TimeoutError:
                break
        return batch

    async def _loop(self) -> None:
        while True:
            batch = await self._collect()
            try:
                await self._run_one(batch)
            except Exception as exc:  # never let one batch end the loop
                log.exception("batch of %d failed outside the model code", len(batch))
                self._fail_inflight(exc)
            self._inflight = []
            del batch

    async def _run_one(self, batch: list[Pending]) -> None:
        # A separate coroutine so that nothing of a finished batch (queries hold their
        # model version) stays referenced by loop locals until the next batch arrives.
        live = [(q, f) for q, f in batch if not f.done()]  # cancelled clients drop out
        if not live:
            return
        loop = asyncio.get_running_loop()
        results = await loop.run_in_executor(
            self.executor, run_isolated, [q for q, _ in live], self.demotion
        )
        self._count(len(live))
        for (_q, fut), res in zip(live, results, strict=True):
            if fut.done():
                continue
            if isinstance(res, Exception):
                fut.set_exception(res)
            else:
                fut.set_result(res)
