"""The log stream of the Redis stores: entries as events, and retention.

Every accepted event is one stream entry (``P:{log}:events``, see
:mod:`feature_store.redis.keys`), its id ``<ms>-<seq>`` the log cursor.

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
the call does not log the event a second time.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Protocol

from feature_store.base import StoreError
from feature_store.events import Event
from feature_store.redis.config import RedisConfig
from feature_store.redis.conn import Attempts, retrying
from feature_store.redis.keys import Keys

#: A stream id as a log cursor: ``<ms>-<seq>``.
STREAM_ID = re.compile(r"^\d+-\d+$")


class LogStream(Protocol):
    """What the trim needs of a store (:class:`feature_store.redis.store.RedisStore`)."""

    config: RedisConfig
    keys: Keys
    cluster_mode: bool

    @property
    def client(self) -> Any: ...

    async def xrange(
        self, start: str, end: str, count: int
    ) -> list[tuple[str, dict[str, str]]]: ...


PAGE = 2000


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
