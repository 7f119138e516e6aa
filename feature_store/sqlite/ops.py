"""The SQL of the embedded store: one function per operation, given a connection.

Write functions run inside the writer's transaction (see
:mod:`feature_store.sqlite.writer`); read functions on a read-only
connection. Orderings match the Redis backend exactly: positives by
``(ts, arrival)``, dislikes and seen by ``(latest ts, item id)``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from feature_store.base import LogBatch, StoreError, UserState
from feature_store.events import DISLIKE, EVENT_TYPES, POSITIVE, Event

#: (event_id, user_id, item_id, type, role, ts) of one event to append.
Row = tuple[str, str, str, str, str, float]


def event_rows(events: Sequence[Event]) -> list[Row]:
    return [(e.event_id, e.user_id, e.item_id, e.type, EVENT_TYPES[e.type], e.ts) for e in events]


def _trim(conn: sqlite3.Connection, table: str, order: str, user: str, keep: int) -> None:
    """Delete the user's rows of ``table`` older (by ``order``) than its newest ``keep``."""
    conn.execute(
        f"DELETE FROM {table} WHERE user_id = ?1 AND ({order}) < ("
        f"SELECT {order} FROM {table} WHERE user_id = ?1"
        f" ORDER BY {order.replace(',', ' DESC,')} DESC LIMIT 1 OFFSET ?2)",
        (user, keep - 1),
    )


def append(
    conn: sqlite3.Connection, rows: list[Row], keep: dict[str, int], ttl: int, now: float
) -> int:
    """Apply the new events among ``rows``; returns how many were accepted.

    ``keep``: the store's storage caps; ``ttl``: idempotency window in seconds (0 = forever).
    """
    accepted = 0
    touched: set[tuple[str, str]] = set()
    for event_id, user, item, etype, role, ts in rows:
        if ttl > 0:
            cur = conn.execute(
                "INSERT INTO accepted VALUES (?, ?, ?) ON CONFLICT (user_id, event_id) DO UPDATE"
                " SET accepted_at = excluded.accepted_at WHERE accepted.accepted_at <= ?",
                (user, event_id, now, now - ttl),
            )
        else:
            cur = conn.execute(
                "INSERT OR IGNORE INTO accepted VALUES (?, ?, ?)", (user, event_id, now)
            )
        if cur.rowcount != 1:
            continue
        accepted += 1
        seq = conn.execute(
            "INSERT INTO log (event_id, user_id, item_id, type, ts, received_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, user, item, etype, ts, now),
        ).lastrowid
        if role == POSITIVE:
            conn.execute("INSERT INTO positives VALUES (?, ?, ?, ?)", (user, ts, seq, item))
        elif role == DISLIKE:
            conn.execute(
                "INSERT INTO dislikes VALUES (?, ?, ?) ON CONFLICT (user_id, item_id)"
                " DO UPDATE SET ts = max(ts, excluded.ts)",
                (user, item, ts),
            )
        conn.execute(
            "INSERT INTO seen VALUES (?, ?, ?) ON CONFLICT (user_id, item_id)"
            " DO UPDATE SET ts = max(ts, excluded.ts)",
            (user, item, ts),
        )
        touched.add((user, role))
    for user, role in sorted(touched):
        if role == POSITIVE:
            _trim(conn, "positives", "ts, seq", user, keep["positives_keep"])
        elif role == DISLIKE:
            _trim(conn, "dislikes", "ts, item_id", user, keep["dislikes_keep"])
    for user in sorted({u for u, _role in touched}):
        _trim(conn, "seen", "ts, item_id", user, keep["seen_keep"])
    return accepted


def read_users(
    conn: sqlite3.Connection, user_ids: list[str], caps: tuple[int, int, int], with_seen: bool
) -> dict[str, UserState]:
    """States of ``user_ids`` from one snapshot; ``caps``: positives, dislikes, seen read caps."""
    positives_cap, dislikes_cap, seen_cap = caps
    out: dict[str, UserState] = {}
    conn.execute("BEGIN")  # one read transaction: every user from the same snapshot
    try:
        for uid in user_ids:
            pos = conn.execute(
                "SELECT item_id FROM positives WHERE user_id = ? ORDER BY ts DESC, seq DESC LIMIT ?",
                (uid, positives_cap),
            ).fetchall()
            dis = conn.execute(
                "SELECT item_id, ts FROM dislikes WHERE user_id = ?"
                " ORDER BY ts DESC, item_id DESC LIMIT ?",
                (uid, dislikes_cap),
            ).fetchall()
            seen = None
            if with_seen:
                seen = {
                    r[0]
                    for r in conn.execute(
                        "SELECT item_id FROM seen WHERE user_id = ?"
                        " ORDER BY ts DESC, item_id DESC LIMIT ?",
                        (uid, seen_cap),
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


def forget(conn: sqlite3.Connection, user_id: str, tombstone: str, now: float) -> int:
    """Delete every row of the user and record the tombstone; returns the log rows deleted."""
    removed = conn.execute("DELETE FROM log WHERE user_id = ?", (user_id,)).rowcount
    for table in ("accepted", "positives", "dislikes", "seen"):
        conn.execute(f"DELETE FROM {table} WHERE user_id = ?", (user_id,))
    conn.execute("INSERT OR REPLACE INTO forgotten VALUES (?, ?)", (tombstone, now))
    return int(removed)


def after_forget(conn: sqlite3.Connection) -> None:
    """After an erasure commits: stop zeroing on delete, and truncate the WAL that held the rows."""
    conn.execute("PRAGMA secure_delete = FAST")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def read_log(conn: sqlite3.Connection, after: int, limit: int) -> LogBatch:
    rows = conn.execute(
        "SELECT seq, event_id, user_id, item_id, type, ts, received_at FROM log"
        " WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, limit),
    ).fetchall()
    events = []
    for seq, event_id, user, item, etype, ts, received_at in rows:
        try:
            events.append(Event(event_id, user, item, etype, float(ts), float(received_at)))
        except (TypeError, ValueError) as exc:
            raise StoreError(
                f"corrupt log row seq={seq} (event {event_id!r}): {exc}; delete it or forget its user"
            ) from exc
    return LogBatch(events=events, cursor=str(rows[-1][0]) if rows else str(after))


def note_consumed(conn: sqlite3.Connection, consumer: str, seq: int, now: float) -> None:
    conn.execute("INSERT OR REPLACE INTO consumers VALUES (?, ?, ?)", (consumer, str(seq), now))
    conn.execute("INSERT OR REPLACE INTO consumer_commits VALUES (?, ?, ?)", (consumer, seq, now))


def trim(conn: sqlite3.Connection, cutoff: float, now: float, idempotency_ttl: int) -> int:
    """Delete log rows every consumer committed past at or before ``cutoff``; returns the count.

    Also drops commit history older than each consumer's chosen commit, and - with an
    idempotency window - accepted ids older than the window.
    """
    if idempotency_ttl > 0:
        conn.execute("DELETE FROM accepted WHERE accepted_at <= ?", (now - idempotency_ttl,))
    names = [r[0] for r in conn.execute("SELECT name FROM consumers")]
    if not names:
        return 0
    chosen: dict[str, int] = {}
    for name in names:
        row = conn.execute(
            "SELECT max(seq) FROM consumer_commits WHERE name = ? AND committed_at <= ?",
            (name, cutoff),
        ).fetchone()
        if row is None or row[0] is None:
            return 0
        chosen[name] = int(row[0])
    for name, seq in chosen.items():
        conn.execute("DELETE FROM consumer_commits WHERE name = ? AND seq < ?", (name, seq))
    point = min(chosen.values())
    return int(conn.execute("DELETE FROM log WHERE seq <= ?", (point,)).rowcount)


def parse_cursor(cursor: str | None) -> int:
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
