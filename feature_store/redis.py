"""The production store on Redis 7 (``redis://`` / ``rediss://``).

Keys: :mod:`feature_store.keys`. Scripts: :mod:`feature_store.redis_scripts`.

Reads: one pipelined round trip for any number of users (LRANGE positives,
ZRANGE dislikes and optionally seen, per user).

Writes: one APPEND script per event, all events of a call pipelined
(``transaction=False``: one round trip, per-event atomicity from the script).
The script checks the idempotency key (``SET NX EX``), XADDs the event to the
log stream and applies the state change, so "acknowledged => in the log"
holds as soon as Redis persists the write: run Redis with ``appendonly yes``
and ``appendfsync always`` for zero loss on a crash (``everysec`` can lose
up to a second of acknowledged events); :meth:`open` logs a warning when AOF
is off.

Redis Cluster: every per-user key carries the ``{u:<id>}`` hash tag and the
stream the ``{log}`` tag, so APPEND touches two slots and runs as one script
only on a single node (standalone Redis, Sentinel, a one-shard cluster).
With ``?cluster=true``, :class:`feature_store.redis_cluster.RedisClusterStore`
splits each write into single-slot steps, log first (see that module).

Failures: every operation is tried ``1 + retries`` times with exponential
backoff (``backoff * 2**attempt``, capped at 1 s); each attempt is bounded by
``socket_timeout`` (scaled with the batch size), so a call never takes longer
than about ``(1 + retries) * (attempt timeout + 1 s)``; then
:class:`StoreUnavailable`. Retrying an append is safe: the script's nonce
check counts an event applied by an earlier attempt of the same call as
accepted, and any other known id as a duplicate.

TTL policy: ``state_ttl`` (seconds, 0 = never) is refreshed on every write of
the user's state keys; idempotency keys expire after ``idempotency_ttl``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.backoff import NoBackoff
from redis.retry import Retry

from feature_store import redis_scripts
from feature_store.base import (
    AppendResult,
    LogBatch,
    OnlineStore,
    StoreError,
    StoreUnavailable,
    UserState,
)
from feature_store.events import EVENT_TYPES, Event, check_events
from feature_store.keys import Keys
from feature_store.urls import RedisConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Events per pipeline (one round trip); larger batches are split.
PIPELINE_CHUNK = 1000
#: Stream entries per XRANGE call.
LOG_PAGE = 2000
SHA = {
    name: hashlib.sha1(getattr(redis_scripts, name).encode()).hexdigest()
    for name in ("APPEND", "APPLY", "LOG_ONCE", "FORGET", "FORGET_LOG", "FORGET_STATE")
}
_STREAM_ID = re.compile(r"^\d+-\d+$")
_TRANSIENT = (rexc.ConnectionError, rexc.TimeoutError, asyncio.TimeoutError, OSError)


class RedisStore(OnlineStore):
    """:class:`OnlineStore` on Redis (see the module docstring)."""

    def __init__(self, url: str, config: RedisConfig) -> None:
        self.url = url
        self.config = config
        self.keys = Keys(config.prefix)
        self.durability: dict[str, str] = {}
        self._client: aioredis.Redis | None = None

    # -- plumbing ------------------------------------------------------------------------

    def _make_client(self) -> aioredis.Redis:
        cfg = self.config
        kwargs: dict[str, Any] = {
            "host": cfg.host,
            "port": cfg.port,
            "db": cfg.db,
            "username": cfg.username,
            "password": cfg.password,
            "socket_timeout": cfg.socket_timeout,
            "socket_connect_timeout": cfg.connect_timeout or cfg.socket_timeout,
            "max_connections": cfg.max_connections,
            "timeout": cfg.socket_timeout,  # wait for a free pooled connection at most this long
            "decode_responses": True,
            # Retries are ours (bounded, with backoff, counted); none inside redis-py.
            "retry": Retry(NoBackoff(), 0),
        }
        if cfg.tls:
            kwargs["connection_class"] = aioredis.SSLConnection
            kwargs["ssl_cert_reqs"] = cfg.ssl_cert_reqs
        pool = aioredis.BlockingConnectionPool(**kwargs)
        return aioredis.Redis(connection_pool=pool)

    @property
    def client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreError(
                f"store {self.config.redacted()} is not open; call `await store.open()` first"
            )
        return self._client

    async def _retrying(self, what: str, fn: Callable[[], Awaitable[T]], *, size: int = 1) -> T:
        cfg = self.config
        attempt_timeout = cfg.socket_timeout * (1 + size / 1000)
        last: BaseException | None = None
        for attempt in range(cfg.retries + 1):
            try:
                return await asyncio.wait_for(fn(), attempt_timeout)
            except rexc.AuthenticationError as exc:
                raise StoreError(f"{self.config.redacted()}: authentication failed: {exc}") from exc
            except _TRANSIENT as exc:
                last = exc
                if attempt < cfg.retries:
                    await asyncio.sleep(min(cfg.backoff * 2**attempt, 1.0))
            except rexc.ResponseError as exc:
                raise StoreError(f"{self.config.redacted()}: {what} failed: {exc}") from exc
        raise StoreUnavailable(
            f"{self.config.redacted()}: {what} failed after {cfg.retries + 1} attempts: "
            f"{type(last).__name__}: {last or 'timed out'}"
        )

    async def _load_scripts(self) -> None:
        for script in redis_scripts.ALL:
            await self.client.script_load(script)

    async def _scripts(self, build: Callable[[Any], None]) -> list[Any]:
        """Run a pipeline of EVALSHA calls; on NOSCRIPT (restarted server, SCRIPT FLUSH) load and rerun.

        Rerunning is safe: nothing ran (NOSCRIPT fails the call before the script starts) or,
        for a partly run pipeline, the scripts are idempotent.
        """
        for _ in range(2):
            pipe = self.client.pipeline(transaction=False)
            build(pipe)
            try:
                return list(await pipe.execute())
            except rexc.NoScriptError:
                await self._load_scripts()
        raise StoreError(f"{self.config.redacted()}: Lua scripts vanished right after SCRIPT LOAD")

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        client = self._make_client()
        self._client = client
        try:
            await self._retrying("PING", client.ping)
        except BaseException:
            await self.close()
            raise
        await self._check_durability()

    async def _check_durability(self) -> None:
        try:
            conf = await self._retrying("CONFIG GET", lambda: self.client.config_get("append*"))
        except StoreError:  # managed services often disable CONFIG; not a reason to refuse
            self.durability = {"appendonly": "unknown"}
            return
        self.durability = {k: str(v) for k, v in conf.items() if k in ("appendonly", "appendfsync")}
        if self.durability.get("appendonly") != "yes":
            log.warning(
                "%s runs without AOF (appendonly=%s): acknowledged events are lost if Redis restarts; "
                "use appendonly yes + appendfsync always",
                self.config.redacted(),
                self.durability.get("appendonly"),
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
            pool = getattr(client, "connection_pool", None)  # RedisCluster has one per node
            if pool is not None:
                await pool.disconnect()

    async def ping(self) -> bool:
        try:
            return bool(await asyncio.wait_for(self.client.ping(), self.config.socket_timeout))
        except (StoreError, *_TRANSIENT, rexc.RedisError):
            return False

    # -- events --------------------------------------------------------------------------

    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        now = time.time()
        check_events(events, now=now)
        # Repeats inside one call are duplicates of their first occurrence; dropping them here
        # keeps return code 2 ("applied by an earlier attempt of this call") unambiguous.
        unique: dict[tuple[str, str], Event] = {}
        for ev in events:
            unique.setdefault((ev.user_id, ev.event_id), ev)
        batch = list(unique.values())
        nonce = uuid.uuid4().hex
        accepted = 0
        for start in range(0, len(batch), PIPELINE_CHUNK):
            chunk = batch[start : start + PIPELINE_CHUNK]
            codes = await self._retrying(
                "append",
                lambda chunk=chunk: self._append_chunk(chunk, nonce, now),  # type: ignore[misc]
                size=len(chunk),
            )
            accepted += sum(1 for c in codes if c in (1, 2))
        return AppendResult(accepted=accepted, duplicates=len(events) - accepted)

    def _state_args(self, ev: Event, nonce: str, now: float) -> list[Any]:
        """ARGV 1-13 of APPEND / APPLY (see redis_scripts)."""
        cfg = self.config
        return [
            nonce, ev.event_id, ev.user_id, ev.item_id, ev.type, EVENT_TYPES[ev.type],
            repr(float(ev.ts)), repr(now), cfg.positives_cap, cfg.dislikes_cap,
            cfg.seen_cap, cfg.idempotency_ttl, cfg.state_ttl,
        ]  # fmt: skip

    async def _append_chunk(self, chunk: list[Event], nonce: str, now: float) -> list[Any]:
        """One attempt at appending ``chunk``: one pipeline of APPEND scripts; returns their codes."""

        def build(pipe: Any) -> None:
            for ev in chunk:
                uk = self.keys.user(ev.user_id)
                keys = [uk.idem(ev.event_id), uk.pos, uk.dis, uk.seen, uk.log, self.keys.stream]
                pipe.execute_command(
                    "EVALSHA", SHA["APPEND"], len(keys), *keys, *self._state_args(ev, nonce, now)
                )

        return await self._scripts(build)

    async def get_users(
        self, user_ids: Sequence[str], *, with_seen: bool = False
    ) -> dict[str, UserState]:
        cfg = self.config
        uids = list(dict.fromkeys(user_ids))
        if not uids:
            return {}

        async def attempt() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for uid in uids:
                uk = self.keys.user(uid)
                pipe.lrange(uk.pos, -cfg.positives_cap, -1)
                pipe.zrange(uk.dis, -cfg.dislikes_cap, -1, withscores=True)
                if with_seen:
                    pipe.zrange(uk.seen, -cfg.seen_cap, -1)
            return await pipe.execute()

        replies = await self._retrying("get_users", attempt, size=len(uids))
        step = 3 if with_seen else 2
        out = {}
        for i, uid in enumerate(uids):
            pos, dis = replies[i * step], replies[i * step + 1]
            out[uid] = UserState(
                user_id=uid,
                positives=[entry.split("|", 1)[1] for entry in pos],
                dislikes=[(item, float(score)) for item, score in dis],
                seen=set(replies[i * step + 2]) if with_seen else None,
            )
        return out

    async def forget_user(self, user_id: str) -> int:
        uk = self.keys.user(user_id)

        def build(pipe: Any) -> None:
            pipe.execute_command(
                "EVALSHA",
                SHA["FORGET"],
                5,
                uk.pos,
                uk.dis,
                uk.seen,
                uk.log,
                self.keys.stream,
                f"{uk.tag}:e:",
            )

        return int((await self._retrying("forget_user", lambda: self._scripts(build)))[0])

    # -- items ---------------------------------------------------------------------------

    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        async def attempt() -> None:
            pipe = self.client.pipeline(transaction=False)
            for iid, meta in items.items():
                pipe.set(self.keys.item_meta(str(iid)), json.dumps(dict(meta), sort_keys=True))
            await pipe.execute()

        await self._retrying("put_item_metadata", attempt, size=len(items))

    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = list(item_ids)

        async def attempt() -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for iid in ids:
                pipe.get(self.keys.item_meta(iid))
            return await pipe.execute()

        values = await self._retrying("get_item_metadata", attempt, size=len(ids))
        return {iid: json.loads(v) for iid, v in zip(ids, values, strict=True) if v is not None}

    # -- log -----------------------------------------------------------------------------

    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        if cursor not in (None, "", "0") and not _STREAM_ID.match(str(cursor)):
            raise StoreError(f"log cursor {cursor!r} is not a Redis stream id (<ms>-<seq>)")
        last = cursor or "0-0"
        events: list[Event] = []
        # Pages of at most LOG_PAGE entries: a reply must parse within socket_timeout.
        while len(events) < max(1, limit):
            start = "-" if last in ("", "0", "0-0") else f"({last}"
            count = min(LOG_PAGE, max(1, limit) - len(events))
            entries = await self._retrying("read_log", self._xrange_page(start, count), size=count)
            events.extend(_event_from_fields(fields) for _sid, fields in entries)
            if entries:
                last = entries[-1][0]
            if len(entries) < count:
                break
        return LogBatch(events=events, cursor=last)

    def _xrange_page(
        self, start: str, count: int
    ) -> Callable[[], Awaitable[list[tuple[str, dict[str, str]]]]]:
        async def page() -> list[tuple[str, dict[str, str]]]:
            reply: Any = await self.client.xrange(self.keys.stream, start, "+", count=count)
            return list(reply or [])

        return page

    async def note_consumed(self, consumer: str, cursor: str) -> None:
        """Mirror an exporter's committed cursor into a consumer group (``XINFO GROUPS`` shows lag)."""
        stream = self.keys.stream

        async def attempt() -> None:
            try:
                await self.client.xgroup_create(stream, consumer, id=cursor, mkstream=True)
            except rexc.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                await self.client.xgroup_setid(stream, consumer, id=cursor)

        await self._retrying("note_consumed", attempt)


def _event_from_fields(fields: Mapping[str, str]) -> Event:
    ts = float(fields["ts"])
    if not math.isfinite(ts):  # pragma: no cover - the script only ever writes finite values
        raise StoreError(f"corrupt log entry: ts={fields['ts']!r}")
    return Event(
        event_id=fields["event_id"],
        user_id=fields["user_id"],
        item_id=fields["item_id"],
        type=fields["type"],
        ts=ts,
        received_at=float(fields["received_at"]),
    )
