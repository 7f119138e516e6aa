"""The embedded store: one SQLite file in WAL mode.

Design (tables: :mod:`feature_store.sqlite.schema`):

* An append is one transaction per group of concurrent calls: for each event,
  the ``accepted`` row (``INSERT OR IGNORE`` on ``(user_id, event_id)``:
  idempotent across threads and processes, forever unless ``idempotency_ttl``
  opts into a window), the ``log`` row and the state rows (positives, or the
  dislike's latest time, and seen), then the user's state trimmed to the
  store's storage caps. Readers never see a state change that is not in the
  log: both commit together.
* ``seq INTEGER PRIMARY KEY AUTOINCREMENT`` is the log order and the cursor;
  AUTOINCREMENT never reuses a number (not after a forget, not after a trim)
  and SQLite serialises writers, so commit order is seq order.
* Reads run on their own threads and read-only connections (``THREADS``):
  WAL lets them proceed while a writer - this process's or another's -
  holds the write lock, so a read never queues behind writes. Writes go
  through the single writer thread (:mod:`feature_store.sqlite.writer`).
* ``synchronous=FULL``: a returned append has been fsynced (the WAL), so it
  survives a process or machine crash. Waiting for another process's write
  lock is bounded by ``busy_timeout``; running out of it raises
  :class:`StoreUnavailable` and nothing was written.
* Cancelling an append (e.g. ``asyncio.wait_for``) before its transaction
  started drops it: nothing is written and the cancellation goes through.
  Once started, it finishes (within one fsync) and the call returns its
  result instead of raising CancelledError, so a caller never wrongly
  believes an acknowledged write did not happen.
* Erasure deletes the user's rows with ``secure_delete`` on, then truncates
  the WAL, so the bytes do not linger in the file.

The TTL policy of the Redis backend (``state_ttl``) does not apply.
"""

from __future__ import annotations

import asyncio
import json
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from feature_store.base import (
    AppendResult,
    LogBatch,
    OnlineStore,
    StoreError,
    StoreUnavailable,
    UserState,
    user_hash,
)
from feature_store.events import Event, check_events
from feature_store.options import KEEP_FOREVER
from feature_store.sqlite import ops
from feature_store.sqlite.config import SQLiteConfig
from feature_store.sqlite.schema import prepare
from feature_store.sqlite.writer import LOCK_SLICE_S, Job, Writer, is_busy

T = TypeVar("T")

#: Reader threads (and read-only connections) per store.
THREADS = 4


def enable_wal(conn: sqlite3.Connection, path: Path, timeout: float) -> None:
    """Put the file in WAL mode, waiting up to ``timeout`` seconds for other connections' locks.

    Processes opening one new file at once race to convert it, and SQLite
    answers a loser "database is locked" at once, without its busy handler (a
    connection holding a shared lock that waited for an exclusive one could
    deadlock), so the wait happens here, in short slices that release every lock.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            break
        except sqlite3.OperationalError as exc:
            if not is_busy(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(LOCK_SLICE_S * random.uniform(0.5, 1.0))
    if str(mode).lower() != "wal":
        raise StoreError(f"{path}: could not enable WAL mode (got {mode!r})")


class SQLiteStore(OnlineStore):
    """:class:`OnlineStore` over one SQLite file (see the module docstring)."""

    def __init__(self, url: str, config: SQLiteConfig) -> None:
        self.url = url
        self.config = config
        self.path = Path(config.path)
        self.store_id = ""
        self.keep = {
            "positives_keep": config.positives_keep,
            "seen_keep": config.seen_keep,
            "dislikes_keep": config.dislikes_keep,
        }
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._readers: ThreadPoolExecutor | None = None
        self._writer: Writer | None = None

    # -- plumbing ------------------------------------------------------------------------

    def _reader_conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.config.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA query_only = 1")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    def _check_open(self) -> Writer:
        if self._writer is None or self._readers is None:
            raise StoreError(f"store {self.url} is not open; call `await store.open()` first")
        return self._writer

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        self._check_open()

        def call() -> T:
            try:
                return fn(self._reader_conn())
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreUnavailable(
                        f"{self.path}: database stayed locked for {self.config.busy_timeout}s ({exc})"
                    ) from exc
                raise StoreError(f"{self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

        assert self._readers is not None
        return await asyncio.get_running_loop().run_in_executor(self._readers, call)

    async def _write(self, job: Job) -> Any:
        """Run a write job on the writer thread and return its result.

        Cancellation: a job not yet started is dropped (nothing written) and the
        CancelledError goes on; a started one is waited for (it is bounded by one
        transaction and fsync) and its result returned, so the caller learns it happened.
        """
        writer = self._check_open()
        future = asyncio.wrap_future(writer.submit(job))
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if writer.cancel(job):
                raise
            deadline = time.monotonic() + self.config.busy_timeout + 5.0
            while not future.done() and time.monotonic() < deadline:
                try:
                    await asyncio.wait({future}, timeout=deadline - time.monotonic())
                except asyncio.CancelledError:
                    continue
            if not future.done() or future.exception() is not None:
                raise
            return future.result()

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return

        def setup(conn: sqlite3.Connection) -> dict[str, str]:
            # Creating or migrating the schema waits for other processes like a write does.
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout * 1000)}")
            try:
                enable_wal(conn, self.path, self.config.busy_timeout)
                return prepare(conn, self.keep)
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(LOCK_SLICE_S * 1000)}")

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot create the store file: {exc}") from exc
        writer = Writer(self.path, self.config.busy_timeout)
        try:
            info = await asyncio.wrap_future(writer.submit(Job(setup, raw=True)))
        except ValueError as exc:
            writer.close()
            raise StoreError(f"{self.path}: {exc}") from exc
        except StoreUnavailable:
            writer.close()
            raise
        except StoreError as exc:
            writer.close()
            raise StoreError(f"not a usable SQLite store: {exc}") from exc
        except (sqlite3.Error, OSError) as exc:
            writer.close()
            raise StoreError(f"{self.path}: cannot create the store file: {exc}") from exc
        self.store_id = info["store_id"]
        self.keep = {k: int(info.get(k, v)) for k, v in self.keep.items()}
        self._writer = writer
        self._readers = ThreadPoolExecutor(THREADS, thread_name_prefix="sqlite-store-read")

    async def close(self) -> None:
        writer, self._writer = self._writer, None
        readers, self._readers = self._readers, None
        loop = asyncio.get_running_loop()
        if writer is not None:  # queued writes finish first
            await loop.run_in_executor(None, writer.close)
        if readers is not None:
            await loop.run_in_executor(None, readers.shutdown)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    async def ping(self) -> bool:
        try:
            return await self._read(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except StoreError:
            return False

    # -- events --------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        check_events(events, now=now)
        if not events:
            return AppendResult(0, 0)
        rows = ops.event_rows(events)
        keep, ttl = dict(self.keep), self.config.idempotency_ttl
        accepted = await self._write(Job(lambda c: ops.append(c, rows, keep, ttl, now)))
        return AppendResult(accepted=accepted, duplicates=len(rows) - accepted)

    async def get_users(
        self, user_ids: Sequence[str], *, with_seen: bool = False
    ) -> dict[str, UserState]:
        caps = (self.config.positives_cap, self.config.dislikes_cap, self.config.seen_cap)
        return await self._read(lambda c: ops.read_users(c, list(user_ids), caps, with_seen))

    async def forget_user(self, user_id: str) -> int:
        tombstone, now = user_hash(user_id), time.time()
        job = Job(
            lambda c: ops.forget(c, user_id, tombstone, now),
            solo=True,
            before=lambda c: c.execute("PRAGMA secure_delete = ON"),
            after=ops.after_forget,
        )
        return int(await self._write(job))

    async def forgotten_users(self) -> dict[str, float]:
        return await self._read(
            lambda c: {h: float(t) for h, t in c.execute("SELECT * FROM forgotten")}
        )

    # -- items ---------------------------------------------------------------------------

    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        rows = [(str(k), json.dumps(dict(v), sort_keys=True)) for k, v in items.items()]
        await self._write(
            Job(lambda c: c.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", rows))
        )

    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            out = {}
            for iid in item_ids:
                row = conn.execute("SELECT meta FROM items WHERE item_id = ?", (iid,)).fetchone()
                if row is not None:
                    out[iid] = json.loads(row[0])
            return out

        return await self._read(read)

    # -- log -----------------------------------------------------------------------------

    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        after = ops.parse_cursor(cursor)
        return await self._read(lambda c: ops.read_log(c, after, max(1, limit)))

    async def note_consumed(self, consumer: str, cursor: str) -> int:
        seq, now = ops.parse_cursor(cursor), time.time()
        await self._write(Job(lambda c: ops.note_consumed(c, consumer, seq, now)))
        return await self.trim_log()

    async def trim_log(self, *, now: float | None = None) -> int:
        retention = self.config.log_retention
        if retention == KEEP_FOREVER:
            return 0
        at = time.time() if now is None else now
        ttl = self.config.idempotency_ttl
        return int(await self._write(Job(lambda c: ops.trim(c, at - retention, at, ttl))))
