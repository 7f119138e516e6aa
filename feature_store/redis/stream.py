"""The log stream of the Redis stores: reading it by cursor, exporters' commits, retention.

Every accepted event is one stream entry (``P:{log}:events``, see
:mod:`feature_store.redis.keys`), its id ``<ms>-<seq>`` the log cursor.
:func:`read_events` returns the entries after a cursor as events, in pages of
XRANGE (:data:`PAGE`). :func:`commit_cursor` records an exporter's committed
cursor in a per-consumer history (what retention reads) and moves the
exporter's consumer group to it (its lag shows in ``XINFO GROUPS``).

Retention: trim what every exporter committed long enough ago. The trim
point is, over every registered consumer (``P:{log}:consumers``), the
lowest of "the highest cursor this consumer committed at least
``log_retention`` seconds ago" (from its commit history ``P:{log}:x:<C>``).
A consumer without such a commit holds everything; so does an empty
registry. Entries up to the trim point go page by page: read the page,
XTRIM MINID just past its last entry (exact, never beyond what was read),
then remove those entries from their users' erasure indexes and, in Cluster
mode, their log guards - except the guards of events still pending (logged
but never applied), which must outlive the entry so that a late retry of
the call does not log the event a second time. The stream goes first: a
crash in between leaves index entries pointing at nothing, harmless, never a
stream entry no index points at.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from typing import Any, Protocol

from redis import exceptions as rexc

from feature_store.base import LogBatch, StoreError
from feature_store.events import Event
from feature_store.redis.config import RedisConfig
from feature_store.redis.conn import Attempts, retrying
from feature_store.redis.keys import Keys

#: A stream id as a log cursor: ``<ms>-<seq>``.
STREAM_ID = re.compile(r"^\d+-\d+$")


class LogStream(Protocol):
    """What this module needs of a store (:class:`feature_store.redis.store.RedisStore`)."""

    config: RedisConfig
    keys: Keys
    cluster_mode: bool

    @property
    def client(self) -> Any: ...

    async def xrange(
        self, start: str, end: str, count: int
    ) -> list[tuple[str, dict[str, str]]]: ...


#: Stream entries per XRANGE call (a reply must parse within ``socket_timeout``).
PAGE = 2000


def _check_cursor(cursor: str) -> None:
    if not STREAM_ID.match(str(cursor)):
        raise StoreError(f"log cursor {cursor!r} is not a Redis stream id (<ms>-<seq>)")


async def read_events(store: LogStream, cursor: str | None, limit: int) -> LogBatch:
    """The events after ``cursor`` (None, "" or "0": from the start), at most ``max(1, limit)``."""
    if cursor not in (None, "", "0"):
        _check_cursor(str(cursor))
    last = cursor or "0-0"
    events: list[Event] = []
    while len(events) < max(1, limit):
        start = "-" if last in ("", "0", "0-0") else f"({last}"
        count = min(PAGE, max(1, limit) - len(events))
        entries = await store.xrange(start, "+", count)
        events.extend(event_from_fields(sid, fields) for sid, fields in entries)
        if entries:
            last = entries[-1][0]
        if len(entries) < count:
            break
    return LogBatch(events=events, cursor=last)


async def commit_cursor(store: LogStream, consumer: str, cursor: str) -> None:
    """Record ``consumer``'s committed ``cursor``: its commit history and its consumer group."""
    _check_cursor(cursor)
    k = store.keys

    async def attempt(_a: Attempts) -> None:
        pipe = store.client.pipeline(transaction=False)
        pipe.sadd(k.consumers, consumer)
        pipe.zadd(k.consumer(consumer), {cursor: time.time()})
        await pipe.execute()
        try:  # XINFO GROUPS shows each exporter's lag
            await store.client.xgroup_create(k.stream, consumer, id=cursor, mkstream=True)
        except rexc.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
            await store.client.xgroup_setid(k.stream, consumer, id=cursor)

    await retrying(store.config, "note_consumed", attempt)


def event_from_fields(sid: str, fields: Mapping[str, str]) -> Event:
    """The event of one stream entry; a StoreError naming the entry if it is malformed."""
    try:
        ts, received_at = float(fields["ts"]), float(fields["received_at"])
        if not (math.isfinite(ts) and math.isfinite(received_at)):
            raise ValueError(f"ts={fields['ts']!r}, received_at={fields['received_at']!r}")
        return Event(
            event_id=fields["event_id"],
            user_id=fields["user_id"],
            item_id=fields["item_id"],
            type=fields["type"],
            ts=ts,
            received_at=received_at,
        )
    except (KeyError, ValueError) as exc:
        raise StoreError(
            f"corrupt log entry {sid}: {type(exc).__name__}: {exc} (fields {dict(fields)}); "
            "delete it with XDEL or forget its user"
        ) from exc


def sid_key(sid: str) -> tuple[int, int]:
    """Sort key of a stream id ``<ms>-<seq>``."""
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq or 0)


def _after(sid: str) -> str:
    ms, seq = sid_key(sid)
    return f"{ms}-{seq + 1}"


async def trim_point(store: LogStream, now: float) -> str | None:
    """The last stream id that may be trimmed at ``now`` (None: nothing may go)."""
    cfg, k = store.config, store.keys
    cutoff = now - cfg.log_retention

    async def history(_a: Attempts) -> dict[str, list[tuple[str, float]]]:
        consumers = sorted(await store.client.smembers(k.consumers))
        pipe = store.client.pipeline(transaction=False)
        for name in consumers:
            pipe.zrangebyscore(k.consumer(name), "-inf", cutoff, withscores=True)
        replies = await pipe.execute() if consumers else []
        return dict(zip(consumers, replies, strict=True))

    old_enough = await retrying(cfg, "trim_log", history)
    if not old_enough or not all(old_enough.values()):
        return None
    chosen = {
        name: max(commits, key=lambda c: sid_key(c[0])) for name, commits in old_enough.items()
    }

    async def prune(_a: Attempts) -> None:  # history older than each consumer's chosen commit
        pipe = store.client.pipeline(transaction=False)
        for name, (_cursor, score) in chosen.items():
            pipe.zremrangebyscore(k.consumer(name), "-inf", f"({score!r}")
        await pipe.execute()

    await retrying(cfg, "trim_log", prune)
    return min((cursor for cursor, _score in chosen.values()), key=sid_key)


async def trim_stream(store: LogStream, now: float) -> int:
    """Trim the stream up to :func:`trim_point`; returns the number of entries removed."""
    point = await trim_point(store, now)
    if point is None:
        return 0
    cfg, k = store.config, store.keys
    trimmed = 0
    while True:
        entries = await store.xrange("-", point, PAGE)
        if not entries:
            return trimmed
        last = entries[-1][0]
        pending = await _pending(store, entries) if store.cluster_mode else set()

        async def xtrim(_a: Attempts, last: str = last) -> int:
            return int(await store.client.xtrim(k.stream, minid=_after(last), approximate=False))

        trimmed += await retrying(cfg, "trim_log", xtrim, size=len(entries))

        async def unindex(_a: Attempts, entries: Any = entries, pending: Any = pending) -> None:
            pipe = store.client.pipeline(transaction=False)
            for sid, fields in entries:
                user, eid = fields.get("user_id"), fields.get("event_id")
                if user is None or eid is None:
                    continue
                pipe.zrem(k.user(user).log, f"{sid} {eid}")
                if store.cluster_mode and sid not in pending:
                    pipe.hdel(k.guards, k.guard_field(user, eid))
            await pipe.execute()

        await retrying(cfg, "trim_log", unindex, size=len(entries))
        if len(entries) < PAGE:
            return trimmed


async def _pending(store: LogStream, entries: list[tuple[str, dict[str, str]]]) -> set[str]:
    """Stream ids among ``entries`` whose event is still pending (claimed, never applied)."""
    listed = [(sid, f) for sid, f in entries if "user_id" in f and "event_id" in f]

    async def check(_a: Attempts) -> list[Any]:
        pipe = store.client.pipeline(transaction=False)
        for _sid, fields in listed:
            pipe.sismember(store.keys.user(fields["user_id"]).pend, fields["event_id"])
        return list(await pipe.execute()) if listed else []

    flags = await retrying(store.config, "trim_log", check, size=len(listed))
    return {sid for (sid, _f), flag in zip(listed, flags, strict=True) if flag}
