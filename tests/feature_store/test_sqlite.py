"""SQLite-specific guarantees: WAL, bounded lock waits, clear errors for unusable files."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from feature_store import StoreError, StoreUnavailable, make_event, open_store
from feature_store.sqlite import ops as sqlite_ops
from feature_store.sqlite.store import THREADS
from feature_store.sqlite.writer import Job

T0 = 1_700_000_000.0


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.sqlite"

    async def go() -> None:
        async with open_store(f"sqlite:///{path}"):
            pass

    asyncio.run(go())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"log", "accepted", "positives", "dislikes", "seen", "items", "consumers",
            "consumer_commits", "forgotten", "schema_info"} <= tables  # fmt: skip


def test_a_held_write_lock_gives_store_unavailable_within_busy_timeout(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    asyncio.run(open_store(f"sqlite:///{path}").open())
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holding the write lock

    async def go() -> None:
        async with open_store(f"sqlite:///{path}?busy_timeout=0.3") as store:
            event = make_event({"event_id": "e", "user_id": "u", "item_id": "i", "type": "like"})
            started = time.monotonic()
            with pytest.raises(StoreUnavailable, match="locked"):
                await store.append_events([event])
            assert time.monotonic() - started < 2.0
            blocker.execute("ROLLBACK")
            assert (await store.append_events([event])).accepted == 1  # nothing half-applied before

    try:
        asyncio.run(go())
    finally:
        blocker.close()


def test_unusable_files_are_reported(tmp_path: Path) -> None:
    not_sqlite = tmp_path / "notes.txt"
    not_sqlite.write_text("this is not a database\n" * 100)
    with pytest.raises(StoreError, match="notes.txt"):
        asyncio.run(open_store(f"sqlite:///{not_sqlite}").open())
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(StoreError, match="cannot create"):
        asyncio.run(open_store(f"sqlite:///{blocked}/store.sqlite").open())


def _event(eid: str, user: str = "u", item: str = "i", etype: str = "like", ts: float = T0):  # type: ignore[no-untyped-def]
    return make_event({"event_id": eid, "user_id": user, "item_id": item, "type": etype, "ts": ts})


def test_reads_do_not_queue_behind_writes_waiting_for_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"

    async def go() -> None:
        async with open_store(f"sqlite:///{path}?busy_timeout=3") as store:
            await store.append_events([_event("seed")])
            blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            writes = [
                asyncio.ensure_future(store.append_events([_event(f"w{k}", item=f"i{k}")]))
                for k in range(THREADS + 2)
            ]
            started = time.monotonic()
            state = await asyncio.wait_for(store.get_user("u"), 2.0)
            assert time.monotonic() - started < 1.0 and state.positives == ["i"]
            assert not any(w.done() for w in writes)
            blocker.execute("COMMIT")
            results = await asyncio.gather(*writes)
            assert sum(r.accepted for r in results) == THREADS + 2
            blocker.close()

    asyncio.run(go())


def test_a_write_cancelled_while_waiting_for_the_lock_is_not_applied(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"

    async def go() -> None:
        async with open_store(f"sqlite:///{path}") as store:
            blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            blocker.execute("BEGIN IMMEDIATE")
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(store.append_events([_event("gave-up")]), 0.2)
            blocker.execute("COMMIT")
            blocker.close()
            assert (await store.append_events([_event("next", item="j")])).accepted == 1
            logged = [e.event_id for e in (await store.read_log(None)).events]
            assert logged == ["next"]  # "nothing was acknowledged" was true
            assert (await store.append_events([_event("gave-up")])).accepted == 1  # retry applies

    asyncio.run(go())


def test_a_write_cancelled_after_it_started_reports_its_result(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started, release = threading.Event(), threading.Event()
    real_append = sqlite_ops.append

    def slow_append(*args: object) -> int:
        started.set()
        release.wait(10)
        return real_append(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(sqlite_ops, "append", slow_append)

    async def go() -> None:
        async with open_store(f"sqlite:///{tmp_path / 'store.sqlite'}") as store:
            task = asyncio.create_task(store.append_events([_event("committed")]))
            await asyncio.to_thread(started.wait, 10)  # the transaction is running
            task.cancel()
            await asyncio.sleep(0)  # deliver the cancellation while the write is in flight
            release.set()
            res = await task  # the outcome, not CancelledError: the write happened
            assert (res.accepted, res.duplicates) == (1, 0)
            assert [e.event_id for e in (await store.read_log(None)).events] == ["committed"]

    asyncio.run(go())


_WRITER = """
import sys
from feature_store import make_event, open_store, run_sync

async def main():
    async with open_store(sys.argv[1]) as store:
        for i in range(10_000):
            ev = make_event({"event_id": f"k{i}", "user_id": f"u{i % 3}", "item_id": f"i{i}",
                             "type": "like", "ts": 1.7e9 + i})
            await store.append_events([ev])
            print(f"ack k{i}", flush=True)

run_sync(main())
"""


def test_every_acknowledged_event_survives_a_sigkill(tmp_path: Path) -> None:
    """A child appends and reports each acknowledgement; SIGKILL; the file holds every one."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url], stdout=subprocess.PIPE, text=True, env=env
    )
    assert child.stdout is not None
    acked = []
    try:
        for line in child.stdout:
            acked.append(line.split()[1])
            if len(acked) == 40:
                child.send_signal(signal.SIGKILL)  # right after an acknowledgement
                break
    finally:
        child.kill()
        child.wait(10)
    assert len(acked) == 40, f"the writer stopped early (exit {child.returncode})"

    async def check() -> None:
        async with open_store(url) as store:
            logged = [e.event_id for e in (await store.read_log(None)).events]
            assert set(acked) <= set(logged) and len(logged) == len(set(logged))
            states = await store.get_users(["u0", "u1", "u2"])
            assert sum(len(s.positives) for s in states.values()) == len(logged)
            sync = await store._write(Job(lambda c: c.execute("PRAGMA synchronous").fetchone()[0]))
            assert sync == 2  # FULL: acknowledged means fsynced, not just written

    asyncio.run(check())


_V1_SCHEMA = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL, user_id TEXT NOT NULL,
    item_id TEXT NOT NULL, type TEXT NOT NULL, role TEXT NOT NULL, ts REAL NOT NULL,
    received_at REAL NOT NULL, UNIQUE (user_id, event_id)
);
CREATE INDEX events_user_role_ts ON events (user_id, role, ts, seq);
CREATE TABLE items (item_id TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE consumers (name TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO schema_info VALUES ('version', '1');
"""


def test_a_schema_1_file_is_migrated_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(_V1_SCHEMA)
    rows = [
        ("a", "u", "i1", "like", "positive", T0 + 1),
        ("b", "u", "bad", "dislike", "dislike", T0 + 2),
        ("c", "u", "i2", "view", "positive", T0 + 3),
        ("d", "gone", "i1", "like", "positive", T0 + 4),
        ("e", "u", "bad", "dislike", "dislike", T0 + 5),
    ]
    conn.executemany(
        "INSERT INTO events (event_id, user_id, item_id, type, role, ts, received_at)"
        " VALUES (?, ?, ?, ?, ?, ?, 0)",
        rows,
    )
    conn.execute("DELETE FROM events WHERE seq = 5")  # a forgotten row: its number is never reused
    conn.execute("INSERT INTO consumers VALUES ('trainer', '2', 0)")
    conn.commit()
    conn.close()

    async def go() -> None:
        async with open_store(f"sqlite:///{path}") as store:
            state = await store.get_user("u", with_seen=True)
            assert state.positives == ["i1", "i2"] and state.dislikes == [("bad", T0 + 2)]
            assert state.seen == {"i1", "i2", "bad"} and len(store.store_id) == 32
            assert [e.event_id for e in (await store.read_log("2")).events] == ["c", "d"]
            assert (await store.append_events([_event("a", item="i1")])).duplicates == 1
            await store.append_events([_event("f", item="i9")])
            assert (await store.read_log("4")).cursor == "6"

    asyncio.run(go())
    tables = {r[0] for r in sqlite3.connect(path).execute("SELECT name FROM sqlite_master")}
    assert "events" not in tables and {"log", "accepted", "consumer_commits"} <= tables


def test_a_migration_waits_for_another_processes_write_like_a_write_does(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode = WAL")  # as schema-1 stores were
    conn.executescript(_V1_SCHEMA)  # opening it migrates: a write
    conn.close()
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
    done = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))  # the other writer finishes
    done.start()

    async def go() -> None:
        async with open_store(f"sqlite:///{path}?busy_timeout=5") as store:
            assert (await store.append_events([_event("after")])).accepted == 1

    try:
        asyncio.run(go())
    finally:
        done.join()
        blocker.close()


def test_opening_a_file_another_connection_is_writing_waits_to_switch_it_to_wal(
    tmp_path: Path,
) -> None:
    # A file still in rollback mode whose write lock another connection holds (as
    # when processes open one new store at once): SQLite refuses the switch to
    # WAL at once, without its busy handler, so the store waits for it itself.
    path = tmp_path / "store.sqlite"
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("CREATE TABLE other (x)")
    blocker.execute("BEGIN IMMEDIATE")

    async def go(timeout: float) -> None:
        async with open_store(f"sqlite:///{path}?busy_timeout={timeout}") as store:
            assert (await store.append_events([_event("first")])).accepted == 1

    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="locked"):
            asyncio.run(go(0.3))  # held past busy_timeout: a clear error, after waiting for it
        assert 0.3 <= time.monotonic() - started < 3.0
        done = threading.Timer(0.3, lambda: blocker.execute("COMMIT"))
        done.start()
        asyncio.run(go(5))  # released within busy_timeout: the open goes through
        done.join()
    finally:
        blocker.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
