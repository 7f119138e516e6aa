"""The production store on Redis 7 (``redis://`` / ``rediss://``).

Keys: :mod:`feature_store.redis.keys`. Scripts: :mod:`feature_store.redis.scripts`.
Clients, error mapping and retries: :mod:`feature_store.redis.conn`.

Reads: one round trip for any number of users (LRANGE positives, ZRANGE
dislikes and optionally seen, per user, capped by the read caps): a pipeline
of READ scripts, one per ``READ_CHUNK`` users, which costs the client a
third to a half of a pipeline of the commands themselves and Redis about
twice as much (``read_script=false`` chooses the commands;
``bench.store_reads`` measures both).

Writes: one APPEND script per event, all events of a call pipelined
(``transaction=False``: one round trip, per-event atomicity from the script).
The script checks the user's idempotency hash, XADDs the event to the log
stream, records the entry in the user's erasure index and applies the state
change (trimmed to the store's storage caps), so "acknowledged => in the
log" holds as soon as Redis persists the write: run Redis with ``appendonly
yes`` and ``appendfsync always`` for zero loss on a crash (``everysec`` can
lose up to a second of acknowledged events); :meth:`open` logs a warning
when AOF is off.

Redis Cluster: every per-user key carries the ``{u:<id>}`` hash tag and the
stream the ``{log}`` tag, so APPEND touches two slots and runs as one script
only on a single node (standalone Redis, Sentinel, a one-shard cluster).
With ``?cluster=true``, :class:`feature_store.redis.cluster.RedisClusterStore`
splits each write into single-slot steps (see that module).

Failures (see :func:`feature_store.redis.conn.retrying`): bounded attempts,
then StoreUnavailable - or, for an append whose pipeline was sent,
StoreOutcomeUnknown. Retrying an append is safe: the idempotency hash holds
the accepting call's nonce, so an event applied by an earlier attempt of the
same call counts as accepted and any other known id as a duplicate.

TTL policy: ``state_ttl`` (seconds, 0 = never) expires positives and seen
after that long without a write; dislikes and the erasure index never
expire; the idempotency hash never expires unless ``idempotency_ttl > 0``
(opt-in, see :class:`feature_store.base.OnlineStore`).

The log (:meth:`read_log`, :meth:`note_consumed`, :meth:`trim_log`): reading it
by cursor, exporters' commits and retention are :mod:`feature_store.redis.stream`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from redis import exceptions as rexc

from feature_store.base import (
    AppendResult,
    LogBatch,
    OnlineStore,
    StoreError,
    UserState,
    user_hash,
)
from feature_store.events import EVENT_TYPES, Event, check_events
from feature_store.options import KEEP_FOREVER
from feature_store.redis import scripts as redis_scripts
from feature_store.redis.config import RedisConfig
from feature_store.redis.conn import Attempts, make_client, retrying
from feature_store.redis.keys import LAYOUT_VERSION, Keys
from feature_store.redis.scripts import SHA
from feature_store.redis.stream import commit_cursor, read_events, trim_stream

log = logging.getLogger(__name__)

#: Users per READ script call (bounds how long one call holds Redis: a script
#: runs alone; ~0.2 ms per user with 400 events).
READ_CHUNK = 8
#: Events per pipeline (one round trip); larger batches are split.
PIPELINE_CHUNK = 1000


class RedisStore(OnlineStore):
    """:class:`OnlineStore` on Redis (see the module docstring)."""

    #: Cluster mode: writes split into single-slot steps (pending ids, log guards).
    cluster_mode = False
    #: Round trips of one append attempt (the Cluster store needs three).
    append_round_trips = 1

    def __init__(self, url: str, config: RedisConfig) -> None:
        self.url = url
        self.config = config
        self.keys = Keys(config.prefix)
        self.durability: dict[str, str] = {}
        self.store_id = ""
        #: Storage caps of the store (from its meta hash; the config's values on creation).
        self.keep = {
            "positives_keep": config.positives_keep,
            "seen_keep": config.seen_keep,
            "dislikes_keep": config.dislikes_keep,
        }
        self._client: Any = None

    # -- plumbing ------------------------------------------------------------------------

    def _make_client(self) -> Any:
        return make_client(self.config)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise StoreError(
                f"store {self.config.redacted()} is not open; call `await store.open()` first"
            )
        return self._client

    async def _load_scripts(self) -> None:
        for script in redis_scripts.ALL.values():
            await self.client.script_load(script)

    async def _scripts(self, build: Any, attempts: Attempts | None = None) -> list[Any]:
        """Run a pipeline of EVALSHA calls; on NOSCRIPT (restarted server, SCRIPT FLUSH) load and rerun.

        With ``attempts``, marks ``attempts.sent`` once a connection is ready and the
        pipeline goes out, unless every reply comes back an error (the scripts fail
        before their first write, so then nothing was applied). Rerunning is safe:
        NOSCRIPT fails a call before its script starts, and the scripts are idempotent.
        """
        for _ in range(2):
            async with self.client.pipeline(transaction=False) as pipe:
                build(pipe)
                before = attempts.sent if attempts is not None else False
                if attempts is not None:
                    await self._reserve_connection(pipe)
                    attempts.sent = True
                replies = list(await pipe.execute(raise_on_error=False))
            errors = [r for r in replies if isinstance(r, Exception)]
            if not errors:
                return replies
            if attempts is not None and len(errors) == len(replies):
                attempts.sent = before  # every script refused: this attempt applied nothing
            if not all(isinstance(e, rexc.NoScriptError) for e in errors):
                raise next(e for e in errors if not isinstance(e, rexc.NoScriptError))
            await self._load_scripts()
        raise StoreError(f"{self.config.redacted()}: Lua scripts vanished right after SCRIPT LOAD")

    async def _reserve_connection(self, pipe: Any) -> None:
        """Connect the pipeline now, so a failure to connect is known to have sent nothing."""
        pipe.connection = await self.client.connection_pool.get_connection()

    async def _script(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One EVALSHA outside a pipeline (loads the scripts on NOSCRIPT)."""
        try:
            return await self.client.evalsha(SHA[name], len(keys), *keys, *args)
        except rexc.NoScriptError:
            await self._load_scripts()
            return await self.client.evalsha(SHA[name], len(keys), *keys, *args)

    # -- lifecycle -----------------------------------------------------------------------

    async def open(self) -> None:
        if self._client is not None:
            return
        self._client = self._make_client()
        try:
            await retrying(self.config, "PING", lambda _a: self.client.ping())
            await self._init_meta()
        except BaseException:
            await self.close()
            raise
        await self._check_durability()

    async def _init_meta(self) -> None:
        """Read the store's identity and storage caps; create them if this is a new store."""
        fields = {
            "store_id": uuid.uuid4().hex,
            "created_at": repr(time.time()),
            "layout": LAYOUT_VERSION,
            **{k: str(v) for k, v in self.keep.items()},
        }
        flat = [x for kv in fields.items() for x in kv]
        meta: Any = await retrying(
            self.config, "store meta", lambda _a: self.client.hgetall(self.keys.meta)
        )
        if not meta:  # a new store (a read-only replica of an existing one never gets here)
            reply: Any = await retrying(
                self.config, "store meta", lambda _a: self._script("INIT", [self.keys.meta], flat)
            )
            meta = (
                dict(zip(reply[::2], reply[1::2], strict=True))
                if isinstance(reply, list)
                else reply
            )
        self.store_id = str(meta["store_id"])
        stored = {k: int(meta.get(k, v)) for k, v in self.keep.items()}
        differ = {k: (getattr(self.config, k), v) for k, v in stored.items() if v != self.keep[k]}
        if differ:
            log.info(
                "%s: using the store's own storage caps %s (configured values are applied only "
                "when a store is created)",
                self.config.redacted(),
                {k: v for k, (_c, v) in differ.items()},
            )
        self.keep = stored
        if meta.get("store_id") == fields["store_id"]:
            await self._warn_about_old_layout()

    async def _warn_about_old_layout(self) -> None:
        old = f"{self.config.prefix}:v1:{{log}}:events"
        try:
            found = await self.client.exists(old)
        except (rexc.RedisError, OSError):  # informational only
            return
        if found:
            log.warning(
                "%s: found data of key layout v1 (%s) beside this new v2 store; it is not read. "
                "Move it over with `twotower migrate-redis URL` (same log, same "
                "cursors), or delete it",
                self.config.redacted(),
                old,
            )

    async def _check_durability(self) -> None:
        try:
            conf = await retrying(
                self.config, "CONFIG GET", lambda _a: self.client.config_get("append*")
            )
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
        once = dataclasses.replace(self.config, retries=0)
        try:
            return bool(await retrying(once, "PING", lambda _a: self.client.ping()))
        except StoreError:
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
        nonce = uuid.uuid4().hex[:12]
        accepted = 0
        for start in range(0, len(batch), PIPELINE_CHUNK):
            chunk = batch[start : start + PIPELINE_CHUNK]
            codes = await retrying(
                self.config,
                "append",
                lambda a, chunk=chunk: self._append_chunk(chunk, nonce, now, a),  # type: ignore[misc]
                size=len(chunk),
                trips=self.append_round_trips,
                write=True,
            )
            accepted += sum(1 for c in codes if c in (1, 2))
        return AppendResult(accepted=accepted, duplicates=len(events) - accepted)

    def _state_args(self, ev: Event, nonce: str, now: float) -> list[Any]:
        """ARGV 1-13 of APPEND / APPLY (see feature_store.redis.scripts)."""
        cfg, keep = self.config, self.keep
        return [
            nonce, ev.event_id, ev.user_id, ev.item_id, ev.type, EVENT_TYPES[ev.type],
            repr(float(ev.ts)), repr(now), keep["positives_keep"], keep["dislikes_keep"],
            keep["seen_keep"], cfg.idempotency_ttl, cfg.state_ttl,
        ]  # fmt: skip

    async def _append_chunk(
        self, chunk: list[Event], nonce: str, now: float, attempts: Attempts
    ) -> list[Any]:
        """One attempt at appending ``chunk``: one pipeline of APPEND scripts; returns their codes."""

        def build(pipe: Any) -> None:
            for ev in chunk:
                uk = self.keys.user(ev.user_id)
                keys = [uk.ids, uk.pos, uk.dis, uk.seen, uk.log, self.keys.stream]
                pipe.execute_command(
                    "EVALSHA", SHA["APPEND"], len(keys), *keys, *self._state_args(ev, nonce, now)
                )

        return await self._scripts(build, attempts)

    async def get_users(
        self, user_ids: Sequence[str], *, with_seen: bool = False
    ) -> dict[str, UserState]:
        cfg = self.config
        uids = list(dict.fromkeys(user_ids))
        if not uids:
            return {}

        replies = await retrying(
            cfg, "get_users", lambda _a: self._read_users(uids, with_seen), size=len(uids)
        )
        step = 3 if with_seen else 2
        out = {}
        for i, uid in enumerate(uids):
            pos, dis = replies[i * step], replies[i * step + 1]
            out[uid] = UserState(
                user_id=uid,
                positives=[entry.split("|", 1)[1] for entry in pos],
                dislikes=list(zip(dis[::2], map(float, dis[1::2]), strict=True)),
                seen=set(replies[i * step + 2]) if with_seen else None,
            )
        return out

    async def _read_users(self, uids: list[str], with_seen: bool) -> list[Any]:
        """Per user: positives, dislikes as flat (member, score) pairs, seen when asked.

        ``read_script`` (the default): one READ script per ``READ_CHUNK`` users, all in
        one pipeline: one round trip, and a command frame to encode and a reply to
        parse per chunk where the pipeline of commands has 2-3 per user.
        """
        if not self.config.read_script:
            return await self._read_pipelined(uids, with_seen)
        cfg = self.config
        caps = (cfg.positives_cap, cfg.dislikes_cap, cfg.seen_cap if with_seen else 0)
        chunks = []
        for start in range(0, len(uids), READ_CHUNK):
            keys: list[str] = []
            for uid in uids[start : start + READ_CHUNK]:
                uk = self.keys.user(uid)
                keys += (uk.pos, uk.dis, uk.seen) if with_seen else (uk.pos, uk.dis)
            chunks.append(keys)

        def build(pipe: Any) -> None:
            for keys in chunks:
                pipe.evalsha(SHA["READ"], len(keys), *keys, *caps)

        return [reply for replies in await self._scripts(build) for reply in replies]

    async def _read_pipelined(self, uids: list[str], with_seen: bool) -> list[Any]:
        """:meth:`_read_users` as one pipeline of LRANGE / ZRANGE commands."""
        cfg = self.config
        pipe = self.client.pipeline(transaction=False)
        for uid in uids:
            uk = self.keys.user(uid)
            pipe.lrange(uk.pos, -cfg.positives_cap, -1)
            pipe.zrange(uk.dis, -cfg.dislikes_cap, -1, withscores=True)
            if with_seen:
                pipe.zrange(uk.seen, -cfg.seen_cap, -1)
        replies = list(await pipe.execute())
        dis = slice(1, None, 3 if with_seen else 2)
        replies[dis] = [[x for pair in pairs for x in pair] for pairs in replies[dis]]
        return replies

    async def forget_user(self, user_id: str) -> int:
        uk, k = self.keys.user(user_id), self.keys
        keys = [uk.pos, uk.dis, uk.seen, uk.ids, uk.log, uk.pend, k.stream, k.forgotten]
        args = [user_hash(user_id), repr(time.time())]
        removed = await retrying(
            self.config, "forget_user", lambda _a: self._script("FORGET", keys, args)
        )
        return int(removed)

    async def forgotten_users(self) -> dict[str, float]:
        raw = await retrying(
            self.config, "forgotten_users", lambda _a: self.client.hgetall(self.keys.forgotten)
        )
        return {h: float(t) for h, t in raw.items()}

    # -- items ---------------------------------------------------------------------------

    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        async def attempt(_a: Attempts) -> None:
            pipe = self.client.pipeline(transaction=False)
            for iid, meta in items.items():
                pipe.set(self.keys.item_meta(str(iid)), json.dumps(dict(meta), sort_keys=True))
            await pipe.execute()

        await retrying(self.config, "put_item_metadata", attempt, size=len(items))

    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        ids = list(item_ids)

        async def attempt(_a: Attempts) -> list[Any]:
            pipe = self.client.pipeline(transaction=False)
            for iid in ids:
                pipe.get(self.keys.item_meta(iid))
            return await pipe.execute()

        values = await retrying(self.config, "get_item_metadata", attempt, size=len(ids))
        return {iid: json.loads(v) for iid, v in zip(ids, values, strict=True) if v is not None}

    # -- log -----------------------------------------------------------------------------

    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        return await read_events(self, cursor, limit)

    async def xrange(self, start: str, end: str, count: int) -> list[tuple[str, dict[str, str]]]:
        """One page of the stream (retried like every read)."""

        async def page(_a: Attempts) -> list[tuple[str, dict[str, str]]]:
            reply: Any = await self.client.xrange(self.keys.stream, start, end, count=count)
            return list(reply or [])

        return await retrying(self.config, "read_log", page, size=count)

    async def note_consumed(self, consumer: str, cursor: str) -> int:
        """Record ``consumer``'s committed cursor (history for retention, consumer group for lag); trim."""
        await commit_cursor(self, consumer, cursor)
        return await self.trim_log()

    async def trim_log(self, *, now: float | None = None) -> int:
        if self.config.log_retention == KEEP_FOREVER:
            return 0
        return await trim_stream(self, time.time() if now is None else now)
