"""SQLite-specific guarantees: WAL, bounded lock waits, clear errors for unusable files."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from feature_store import StoreError, StoreUnavailable, make_event, open_store


def test_wal_mode_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "store.sqlite"

    async def go() -> None:
        async with open_store(f"sqlite:///{path}"):
            pass

    asyncio.run(go())
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"events", "items", "consumers", "schema_info"} <= tables


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
