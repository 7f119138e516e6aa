"""The SQLite store's writer: one thread, one connection, every write of the store in order.

Reads never wait here (they have their own threads and connections; WAL lets
them run beside a writer). Writes queue here and are committed in groups:
the jobs waiting when the writer becomes free share one ``BEGIN IMMEDIATE``
... ``COMMIT`` (one fsync), each inside its own SAVEPOINT, so one job's
failure does not undo another's and concurrent appends cost one disk flush.

Waiting for another process's write lock happens in short slices, and a job
cancelled while it waits is dropped before its transaction starts - nothing
of it is written. Once a job's transaction has started it runs to COMMIT or
ROLLBACK (milliseconds plus one fsync), so its outcome is always known: see
:meth:`feature_store.sqlite.store.SQLiteStore._write`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from feature_store.base import StoreError, StoreUnavailable

#: Seconds of one wait for another process's write lock (cancelled jobs are dropped between).
LOCK_SLICE_S = 0.05
#: Jobs per group transaction.
MAX_GROUP = 64


class State(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"


@dataclass(eq=False)
class Job:
    """One write: ``body(conn)`` runs inside a transaction; ``after(conn)`` after its commit.

    ``solo`` jobs get a transaction of their own (``before`` runs just before it);
    ``raw`` jobs run ``body`` with no transaction management at all (schema setup).
    """

    body: Callable[[sqlite3.Connection], Any]
    solo: bool = False
    raw: bool = False
    before: Callable[[sqlite3.Connection], Any] | None = None
    after: Callable[[sqlite3.Connection], Any] | None = None
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)
    state: State = State.QUEUED


def is_busy(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "busy" answers (another connection holds a lock)."""
    text = str(exc)
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in text or "busy" in text)


class Writer:
    """The writer thread of one store (see the module docstring)."""

    def __init__(self, path: Path, busy_timeout: float) -> None:
        self.path = path
        self.busy_timeout = busy_timeout
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._conn: sqlite3.Connection | None = None
        self._thread = threading.Thread(target=self._loop, name="sqlite-store-writer", daemon=True)
        self._thread.start()

    # -- caller side -----------------------------------------------------------------------

    def submit(self, job: Job) -> concurrent.futures.Future[Any]:
        with self._cond:
            if self._closing:
                raise StoreError(f"{self.path}: the store is closed")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    def cancel(self, job: Job) -> bool:
        """Drop ``job`` if its transaction has not started; True when it was dropped."""
        with self._cond:
            if job.state is State.QUEUED:
                job.state = State.CANCELLED
                return True
            return job.state is State.CANCELLED

    def close(self) -> None:
        """Finish the queued jobs, then stop the thread and close the connection."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    # -- writer thread ---------------------------------------------------------------------

    def _error(self, exc: BaseException) -> BaseException:
        """The store's exception for a failed write (nothing of the job was committed)."""
        if isinstance(exc, StoreError | ValueError):
            return exc
        if is_busy(exc):
            return StoreUnavailable(
                f"{self.path}: the database stayed locked by another writer for "
                f"{self.busy_timeout}s ({exc}); nothing was written"
            )
        if isinstance(exc, sqlite3.DatabaseError):
            return StoreError(f"{self.path}: {exc}")
        return exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=LOCK_SLICE_S, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(LOCK_SLICE_S * 1000)}")
        conn.execute("PRAGMA synchronous = FULL")  # an acknowledged write is on disk
        conn.execute("PRAGMA secure_delete = FAST")  # deleted rows are overwritten in their pages
        return conn

    def _next_group(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closing:
                self._cond.wait()
            if not self._queue:
                return None
            first = self._queue.popleft()
            group = [first]
            if not (first.solo or first.raw):
                while self._queue and len(group) < MAX_GROUP:
                    nxt = self._queue[0]
                    if nxt.solo or nxt.raw:
                        break
                    group.append(self._queue.popleft())
            return group

    def _loop(self) -> None:
        try:
            while (group := self._next_group()) is not None:
                try:
                    if self._conn is None:
                        self._conn = self._connect()
                    if group[0].raw:
                        self._run_raw(self._conn, group[0])
                    else:
                        self._run_group(self._conn, group)
                except BaseException as exc:  # never leave a caller waiting
                    for job in group:
                        job.state = State.DONE
                        if not job.future.done():
                            job.future.set_exception(self._error(exc))
        finally:
            if self._conn is not None:
                self._conn.close()

    def _run_raw(self, conn: sqlite3.Connection, job: Job) -> None:
        with self._cond:
            if job.state is State.CANCELLED:
                job.future.cancel()
                return
            job.state = State.RUNNING
        try:
            job.future.set_result(job.body(conn))
        except BaseException as exc:
            job.future.set_exception(self._error(exc))
        job.state = State.DONE

    def _begin(self, conn: sqlite3.Connection, group: list[Job]) -> list[Job]:
        """BEGIN IMMEDIATE, waiting in slices; returns the jobs that will run (maybe none)."""
        deadline = time.monotonic() + self.busy_timeout
        while True:
            with self._cond:
                live = [j for j in group if j.state is State.QUEUED]
            for job in group:
                if job.state is State.CANCELLED and not job.future.done():
                    job.future.cancel()
            if not live:
                return []
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                if is_busy(exc) and time.monotonic() < deadline:
                    continue
                raise
            with self._cond:  # a cancel from now on waits for the outcome
                running = [j for j in live if j.state is State.QUEUED]
                for job in running:
                    job.state = State.RUNNING
            for job in live:
                if job.state is State.CANCELLED and not job.future.done():
                    job.future.cancel()
            if not running:
                conn.execute("ROLLBACK")
            return running

    def _run_group(self, conn: sqlite3.Connection, group: list[Job]) -> None:
        for job in group:
            if job.before is not None:
                job.before(conn)
        running = self._begin(conn, group)
        if not running:
            return
        outcomes: list[tuple[Job, Any, BaseException | None]] = []
        try:
            for job in running:
                conn.execute("SAVEPOINT job")
                try:
                    value = job.body(conn)
                except (sqlite3.OperationalError, sqlite3.DatabaseError):
                    raise  # the transaction itself is in trouble: undo the whole group
                except Exception as exc:  # this job's own failure (bad data, a bug)
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    outcomes.append((job, None, exc))
                    continue
                conn.execute("RELEASE job")
                outcomes.append((job, value, None))
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            for job in running:
                job.state = State.DONE
                job.future.set_exception(self._error(exc))
            return
        for job, value, error in outcomes:
            job.state = State.DONE
            if error is None:
                job.future.set_result(value)
            else:
                job.future.set_exception(error)
        for job in running:
            if job.after is not None:
                # Best effort (e.g. a checkpoint while readers hold the WAL).
                with contextlib.suppress(sqlite3.Error):
                    job.after(conn)
