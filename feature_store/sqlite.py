"""The embedded store: one SQLite file in WAL mode.

Design: the ``events`` table *is* the durable log and the state is derived
from it with indexed queries, so one event's state change is one row insert
(atomic by construction) and the log can never disagree with the state.

* ``seq INTEGER PRIMARY KEY AUTOINCREMENT`` is the log order and the cursor;
  AUTOINCREMENT never reuses a number, even after :meth:`forget_user`
  deletes rows, and SQLite serialises writers, so commit order is seq order
  and a reader that saw ``seq = n`` will never later find a row below ``n``.
* ``UNIQUE (user_id, event_id)`` makes appends idempotent across threads and
  processes (``INSERT OR IGNORE`` in a ``BEGIN IMMEDIATE`` transaction). The
  id is scoped to its user, as in the Redis backend, where a global id index
  would be a cross-slot write in Redis Cluster.
* Positives: the user's latest ``positives_cap`` positive events by
  ``(ts, seq)``, returned oldest first (repeats kept, as in the Redis list).
  Dislikes / seen: distinct items with their latest ts, the newest
  ``dislikes_cap`` / ``seen_cap`` of them, oldest first, ties by item id.
  The ``(user_id, role, ts, seq)`` index makes each read O(cap) for positives
  and O(user's events of that role) for the grouped reads.
* ``synchronous=FULL``: a returned append has been fsynced (the WAL), so it
  survives a process or machine crash. ``busy_timeout`` bounds lock waits;
  running out of it raises :class:`StoreUnavailable`.
* Blocking calls run off the event loop in the store's own small thread pool
  (``THREADS`` threads, each with its own connection, reused for the store's
  lifetime whatever loop awaits them).

The TTL policy of the Redis backend does not apply: this file is the log.
"""

from __future__ import annotations

import asyncio
import json
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
)
from feature_store.events import EVENT_TYPES, Event, check_events
from feature_store.urls import SQLiteConfig

T = TypeVar("T")

#: Worker threads (and connections) per store: WAL readers run in parallel, writers queue.
THREADS = 4
SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    role TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL,
    UNIQUE (user_id, event_id)
);
CREATE INDEX IF NOT EXISTS events_user_role_ts ON events (user_id, role, ts, seq);
CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consumers (name TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_COLUMNS = "seq, event_id, user_id, item_id, type, ts, received_at"


class SQLiteStore(OnlineStore):
    """:class:`OnlineStore` over one SQLite file (see the module docstring)."""

    def __init__(self, url: str, config: SQLiteConfig) -> None:
        self.url = url
        self.config = config
        self.path = Path(config.path)
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._opened = False
        self._executor: ThreadPoolExecutor | None = None

    # -- connections ---------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path,
                timeout=self.config.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.config.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            self._local.conn = conn
            with self._lock:
                self._conns.append(conn)
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._opened:
            raise StoreError(f"store {self.url} is not open; call `await store.open()` first")

        def call() -> T:
            try:
                return fn(self._conn())
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreUnavailable(
                        f"{self.path}: database stayed locked for {self.config.busy_timeout}s ({exc})"
                    ) from exc
                raise StoreError(f"{self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: {exc}") from exc

        return await self._offload(call)

    async def _offload(self, fn: Callable[[], T]) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(THREADS, thread_name_prefix="sqlite-store")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    @staticmethod
    def _write(conn: sqlite3.Connection, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` in an immediate (write-locking) transaction."""
        conn.execute("BEGIN IMMEDIATE")
        try:
            out = body(conn)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return out

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return

        def create() -> None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = self._conn()
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: could not enable WAL mode (got {mode!r})")
                found = _schema_version(conn)
                if found is None:  # a new file: create the schema (a write; readers need none)
                    conn.executescript(SCHEMA)  # IF NOT EXISTS: safe when processes race
                    self._write(
                        conn,
                        lambda c: c.execute(
                            "INSERT OR IGNORE INTO schema_info VALUES ('version', ?)",
                            (SCHEMA_VERSION,),
                        ),
                    )
                    found = _schema_version(conn)
                if found != SCHEMA_VERSION:
                    raise StoreError(
                        f"{self.path}: schema version {found}, this code reads {SCHEMA_VERSION}"
                    )
            except OSError as exc:
                raise StoreError(f"{self.path}: cannot create the store file: {exc}") from exc
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    raise StoreUnavailable(f"{self.path}: {exc}") from exc
                raise StoreError(f"{self.path}: {exc}") from exc
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"{self.path}: not a usable SQLite store: {exc}") from exc

        await self._offload(create)
        self._opened = True

    async def close(self) -> None:
        self._opened = False
        executor, self._executor = self._executor, None
        if executor is not None:  # let in-flight calls finish before their connections close
            await asyncio.get_running_loop().run_in_executor(None, executor.shutdown)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    async def ping(self) -> bool:
        try:
            return await self._run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except StoreError:
            return False

    # -- events --------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        check_events(events, now=now)
        rows = [
            (e.event_id, e.user_id, e.item_id, e.type, EVENT_TYPES[e.type], e.ts, now)
            for e in events
        ]
        if not rows:
            return AppendResult(0, 0)

        def body(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events (event_id, user_id, item_id, type, role, ts, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            return conn.total_changes - before

        accepted = await self._run(lambda c: self._write(c, body))
        return AppendResult(accepted=accepted, duplicates=len(rows) - accepted)

    async def get_users(
        self, user_ids: Sequence[str], *, with_seen: bool = False
    ) -> dict[str, UserState]:
        cfg = self.config

        def read(conn: sqlite3.Connection) -> dict[str, UserState]:
            out: dict[str, UserState] = {}
            # One read transaction: the state of all users is from the same snapshot.
            conn.execute("BEGIN")
            try:
                for uid in user_ids:
                    pos = conn.execute(
                        "SELECT item_id FROM events WHERE user_id = ? AND role = 'positive'"
                        " ORDER BY ts DESC, seq DESC LIMIT ?",
                        (uid, cfg.positives_cap),
                    ).fetchall()
                    dis = conn.execute(
                        "SELECT item_id, max(ts) AS t FROM events WHERE user_id = ? AND role = 'dislike'"
                        " GROUP BY item_id ORDER BY t DESC, item_id DESC LIMIT ?",
                        (uid, cfg.dislikes_cap),
                    ).fetchall()
                    seen = None
                    if with_seen:
                        seen = {
                            r[0]
                            for r in conn.execute(
                                "SELECT item_id, max(ts) AS t FROM events WHERE user_id = ?"
                                " GROUP BY item_id ORDER BY t DESC, item_id DESC LIMIT ?",
                                (uid, cfg.seen_cap),
                            )
                        }
                    out[uid] = UserState(
                        user_id=uid,
                        positives=[r[0] for r in reversed(pos)],
                        dislikes=[(r[0], float(r[1])) for r in reversed(dis)],
                        seen=seen,
                    )
            finally:
                conn.execute("COMMIT")
            return out

        return await self._run(read)

    async def forget_user(self, user_id: str) -> int:
        return await self._run(
            lambda c: self._write(
                c, lambda w: w.execute("DELETE FROM events WHERE user_id = ?", (user_id,)).rowcount
            )
        )

    # -- items ---------------------------------------------------------------------------

    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        rows = [(str(k), json.dumps(dict(v), sort_keys=True)) for k, v in items.items()]
        await self._run(
            lambda c: self._write(
                c, lambda w: w.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)", rows)
            )
        )

    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        def read(conn: sqlite3.Connection) -> dict[str, dict[str, Any]]:
            out = {}
            for iid in item_ids:
                row = conn.execute("SELECT meta FROM items WHERE item_id = ?", (iid,)).fetchone()
                if row is not None:
                    out[iid] = json.loads(row[0])
            return out

        return await self._run(read)

    # -- log -----------------------------------------------------------------------------

    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        after = _parse_cursor(cursor)

        def read(conn: sqlite3.Connection) -> LogBatch:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, max(1, limit)),
            ).fetchall()
            events = [Event(r[1], r[2], r[3], r[4], float(r[5]), float(r[6])) for r in rows]
            return LogBatch(events=events, cursor=str(rows[-1][0]) if rows else str(after))

        return await self._run(read)

    async def note_consumed(self, consumer: str, cursor: str) -> None:
        await self._run(
            lambda c: self._write(
                c,
                lambda w: w.execute(
                    "INSERT OR REPLACE INTO consumers VALUES (?, ?, ?)",
                    (consumer, cursor, time.time()),
                ),
            )
        )


def _schema_version(conn: sqlite3.Connection) -> str | None:
    try:
        row = conn.execute("SELECT value FROM schema_info WHERE key = 'version'").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    return None if row is None else str(row[0])


def _parse_cursor(cursor: str | None) -> int:
    if cursor is None or cursor == "":
        return 0
    try:
        value = int(cursor)
    except (TypeError, ValueError):
        raise StoreError(
            f"log cursor {cursor!r} is not a SQLite cursor (an integer sequence number)"
        ) from None
    if value < 0:
        raise StoreError(f"log cursor {cursor!r} must be >= 0")
    return value
