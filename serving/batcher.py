"""Micro-batching: concurrent queries share one tower call and one FAISS search.

Requests put a :class:`~serving.retrieval.Query` on an asyncio queue and await
a future. One collector task takes the first waiting query, then keeps
collecting for at most ``max_wait_ms`` (or until ``max_size``), and hands the
batch to a single worker thread, so TensorFlow and FAISS never block the event
loop and never compete with each other for the 2 cores. While that thread
works, new queries pile up and form the next batch: batches grow with load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serving.retrieval import Demotion, Query, Result, run_batch
from serving.tasks import cancel_task

log = logging.getLogger(__name__)


class BatcherClosed(RuntimeError):
    """The batcher was stopped; no more queries are answered."""


class Arrival:
    """A request announced to the batcher; ``landed()`` once its query is queued (idempotent)."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._landed = False

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
      on_batch: called with the batch size after each batch (metrics).
    """

    def __init__(
        self,
        max_size: int = 64,
        max_wait_ms: float = 1.0,
        demotion: Demotion = Demotion(),
        on_batch: Callable[[int], Any] | None = None,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be >= 1")
        self.max_size = max_size
        self.max_wait_s = max_wait_ms / 1000.0
        self.demotion = demotion
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[Query, asyncio.Future[Result]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.batches = 0
        self.queries = 0
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
        self._task = asyncio.create_task(self._loop(), name="twotower-batcher")

    async def stop(self) -> None:
        await cancel_task(self._task)
        self._task = None
        if self._queue is not None:
            while not self._queue.empty():
                _q, fut = self._queue.get_nowait()
                if not fut.done():
                    fut.set_exception(BatcherClosed("server is shutting down"))
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
        """Answer one query (awaits its batch); ``arrival`` is the announcement from :meth:`incoming`."""
        if self._queue is None or self._task is None or self._task.done():
            raise BatcherClosed("batcher is not running")
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((query, fut))
        if arrival is not None:
            arrival.landed()
        return await fut

    async def _collect(self) -> list[tuple[Query, asyncio.Future[Result]]]:
        assert self._queue is not None
        batch = [await self._queue.get()]
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
            await self._run_one(await self._collect())

    async def _run_one(self, batch: list[tuple[Query, asyncio.Future[Result]]]) -> None:
        # A separate coroutine so that nothing of a finished batch (queries hold their
        # model version) stays referenced by loop locals until the next batch arrives.
        live = [(q, f) for q, f in batch if not f.done()]  # cancelled clients drop out
        if not live:
            return
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                self.executor, run_batch, [q for q, _ in live], self.demotion
            )
        except Exception as exc:  # a failing batch must not kill the loop
            log.exception("batch of %d failed", len(live))
            for _q, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.batches += 1
        self.queries += len(live)
        if self.on_batch is not None:
            self.on_batch(len(live))
        for (_q, fut), res in zip(live, results, strict=True):
            if not fut.done():
                fut.set_result(res)
