"""Schema of the embedded store, its creation and the migration from schema 1.

Schema 2 keeps the log apart from the state, so the log can be trimmed
after export without touching what a read returns (dislikes must never
go), and keeps the idempotency record apart from both, so it outlives any
trim::

    log        seq (AUTOINCREMENT: the log order and cursor), event fields
    accepted   (user_id, event_id) -> accepted_at: the idempotency record
    positives  (user_id, ts, seq) -> item_id, the user's newest positives_keep
    dislikes   (user_id, item_id) -> latest ts, at most dislikes_keep per user
    seen       (user_id, item_id) -> latest ts, the newest seen_keep per user
    items      item_id -> metadata JSON
    consumers, consumer_commits   exporters' cursors and their commit times (retention)
    forgotten  user_hash -> forgotten_at (erasure tombstones)
    schema_info  version, store_id, created_at, storage caps

Schema 1 (one ``events`` table that was log and state at once) is migrated
in place, in one transaction, when a store opens it: same sequence numbers,
so exporters' cursors stay valid.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from typing import Any

SCHEMA_VERSION = "2"

_TABLES = """
CREATE TABLE IF NOT EXISTS log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    type TEXT NOT NULL,
    ts REAL NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS log_user ON log (user_id, seq);
CREATE TABLE IF NOT EXISTS accepted (
    user_id TEXT NOT NULL, event_id TEXT NOT NULL, accepted_at REAL NOT NULL,
    PRIMARY KEY (user_id, event_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS positives (
    user_id TEXT NOT NULL, ts REAL NOT NULL, seq INTEGER NOT NULL, item_id TEXT NOT NULL,
    PRIMARY KEY (user_id, ts, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dislikes (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS dislikes_by_ts ON dislikes (user_id, ts, item_id);
CREATE TABLE IF NOT EXISTS seen (
    user_id TEXT NOT NULL, item_id TEXT NOT NULL, ts REAL NOT NULL,
    PRIMARY KEY (user_id, item_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS seen_by_ts ON seen (user_id, ts, item_id);
CREATE TABLE IF NOT EXISTS items (item_id TEXT PRIMARY KEY, meta TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS consumers (
    name TEXT PRIMARY KEY, cursor TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS consumer_commits (
    name TEXT NOT NULL, seq INTEGER NOT NULL, committed_at REAL NOT NULL,
    PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS forgotten (user_hash TEXT PRIMARY KEY, forgotten_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS schema_info (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

_FROM_V1 = """
INSERT INTO log (seq, event_id, user_id, item_id, type, ts, received_at)
    SELECT seq, event_id, user_id, item_id, type, ts, received_at FROM events ORDER BY seq;
INSERT INTO accepted (user_id, event_id, accepted_at)
    SELECT user_id, event_id, received_at FROM events;
INSERT INTO positives (user_id, ts, seq, item_id)
    SELECT user_id, ts, seq, item_id FROM events WHERE role = 'positive';
INSERT INTO dislikes (user_id, item_id, ts)
    SELECT user_id, item_id, max(ts) FROM events WHERE role = 'dislike' GROUP BY user_id, item_id;
INSERT INTO seen (user_id, item_id, ts)
    SELECT user_id, item_id, max(ts) FROM events GROUP BY user_id, item_id;
DELETE FROM sqlite_sequence WHERE name = 'log';
INSERT INTO sqlite_sequence (name, seq) SELECT 'log', seq FROM sqlite_sequence WHERE name = 'events';
DROP TABLE events;
INSERT OR IGNORE INTO consumer_commits (name, seq, committed_at)
    SELECT name, CAST(cursor AS INTEGER), updated_at FROM consumers;
"""


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]


def _info(conn: sqlite3.Connection) -> dict[str, str]:
    try:
        return {k: v for k, v in conn.execute("SELECT key, value FROM schema_info")}
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return {}
        raise


def prepare(conn: sqlite3.Connection, keep: dict[str, int]) -> dict[str, str]:
    """Create or migrate the schema on a writer connection (autocommit mode); return schema_info.

    ``keep``: the storage caps to record if the store is new. Safe when several
    processes open the same new file at once (one transaction, IF NOT EXISTS).

    Raises:
      ValueError: the file holds a schema version this code does not read.
    """
    info = _info(conn)
    if info.get("version") == SCHEMA_VERSION and "store_id" in info:
        return info
    conn.execute("BEGIN IMMEDIATE")
    try:
        info = _info(conn)  # again, under the write lock: another process may have done it
        version = info.get("version")
        if version not in (None, "1", SCHEMA_VERSION):
            raise ValueError(f"schema version {version}, this code reads {SCHEMA_VERSION}")
        for statement in _statements(_TABLES):
            conn.execute(statement)
        if version == "1":
            for statement in _statements(_FROM_V1):
                conn.execute(statement)
        values: dict[str, Any] = {
            "store_id": uuid.uuid4().hex,
            "created_at": repr(time.time()),
            **{k: str(v) for k, v in keep.items()},
        }
        conn.executemany("INSERT OR IGNORE INTO schema_info VALUES (?, ?)", sorted(values.items()))
        conn.execute("INSERT OR REPLACE INTO schema_info VALUES ('version', ?)", (SCHEMA_VERSION,))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return _info(conn)
