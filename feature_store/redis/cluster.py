"""The Redis store on Redis Cluster (``redis://node:port/0?cluster=true``).

Same keys as :mod:`feature_store.redis.store`; what changes is everything that
would cross slots (a user's ``{u:<id>}`` keys vs the ``{log}`` keys, one user's
vs another's), since a cluster refuses a multi-slot script:

* get_users: LRANGE / ZRANGE per user in one pipeline in place of the READ
  script (the cluster client sends each node its users' commands);

* append, per chunk of events, three pipelines (see
  :mod:`feature_store.redis.scripts`): CLAIM on the users' slots (a known id
  stops here, so a duplicate is never logged again however late it comes;
  a new id is recorded as pending), LOG_ONCE on the stream's slot (XADD
  unless the event's guard holds a stream id), APPLY on the users' slots
  (idempotency record, erasure index, state). The call acknowledges only
  after APPLY, so an acknowledged event is in the log, once. A call that
  fails after LOG_ONCE leaves an unacknowledged log entry, still findable
  by an erasure (pending id + guard); retrying it reuses that entry.
* forget_user: read the user's erasure index and pending ids (user slot);
  delete those stream entries and guards and record the tombstone
  (FORGET_LOG, stream slot); remove exactly what was read and the user's
  state (FORGET_STATE, user slot); repeat while an append that raced with
  it left something behind, so no entry ever loses its index.

The stream is one key, so one node takes every log write; the knob beyond
that is sharding the stream by a hash of the user (``{log:<k>}``) and merging
shards by stream id on read, not needed at this project's scale.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis.asyncio.cluster as aiocluster

from feature_store.base import user_hash
from feature_store.events import Event
from feature_store.redis.conn import Attempts, no_retry, retrying, ssl_kwargs
from feature_store.redis.scripts import SHA
from feature_store.redis.store import RedisStore

log = logging.getLogger(__name__)

#: forget_user rounds before giving up on a user whose appends keep racing with it.
FORGET_ROUNDS = 20


class RedisClusterStore(RedisStore):
    """:class:`RedisStore` whose writes keep to one slot per script (see the module docstring)."""

    cluster_mode = True
    append_round_trips = 3

    def _make_client(self) -> Any:
        cfg = self.config
        return aiocluster.RedisCluster(
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            ssl=cfg.tls,
            **(ssl_kwargs(cfg) if cfg.tls else {}),
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.connect_timeout or cfg.socket_timeout,
            socket_keepalive=cfg.socket_keepalive,
            health_check_interval=cfg.health_check_interval,
            max_connections=cfg.max_connections,
            decode_responses=True,
            # Our own bounded retries decide; redis-py still follows MOVED/ASK redirections.
            retry=no_retry(),
        )

    async def _reserve_connection(self, pipe: Any) -> None:
        """A cluster pipeline picks its nodes on execute: nothing to reserve."""

    async def _check_durability(self) -> None:
        try:
            conf: Any = await retrying(
                self.config,
                "CONFIG GET",
                lambda _a: self.client.config_get("append*", target_nodes="primaries"),
            )
        except Exception:  # managed clusters often disable CONFIG
            self.durability = {"appendonly": "unknown"}
            return
        # One answer per primary: report the weakest.
        values: Any = (
            conf.values() if conf and isinstance(next(iter(conf.values())), dict) else [conf]
        )
        modes = {str(v.get("appendonly")) for v in values}
        self.durability = {"appendonly": "yes" if modes == {"yes"} else ",".join(sorted(modes))}

    async def _append_chunk(
        self, chunk: list[Event], nonce: str, now: float, attempts: Attempts
    ) -> list[Any]:
        def claim_step(pipe: Any) -> None:
            for ev in chunk:
                uk = self.keys.user(ev.user_id)
                pipe.execute_command(
                    "EVALSHA", SHA["CLAIM"], 2, uk.ids, uk.pend, nonce, ev.event_id
                )

        codes = [int(c) for c in await self._scripts(claim_step)]
        todo = [i for i, c in enumerate(codes) if c == 1]
        if not todo:
            return codes

        def log_step(pipe: Any) -> None:
            for i in todo:
                ev = chunk[i]
                pipe.execute_command(
                    "EVALSHA", SHA["LOG_ONCE"], 2, self.keys.guards, self.keys.stream,
                    self.keys.guard_field(ev.user_id, ev.event_id), ev.event_id, ev.user_id,
                    ev.item_id, ev.type, repr(float(ev.ts)), repr(now), self.config.idempotency_ttl,
                )  # fmt: skip

        stream_ids = await self._scripts(log_step)

        def apply_step(pipe: Any) -> None:
            for i, sid in zip(todo, stream_ids, strict=True):
                ev = chunk[i]
                uk = self.keys.user(ev.user_id)
                keys = [uk.ids, uk.pos, uk.dis, uk.seen, uk.log, uk.pend]
                pipe.execute_command(
                    "EVALSHA", SHA["APPLY"], len(keys), *keys, *self._state_args(ev, nonce, now), sid
                )  # fmt: skip

        applied = await self._scripts(apply_step, attempts)  # from here the outcome may be unknown
        for i, code in zip(todo, applied, strict=True):
            codes[i] = int(code)
        return codes

    async def _read_users(self, uids: list[str], with_seen: bool) -> list[Any]:
        return await self._read_pipelined(uids, with_seen)  # a script may not cross slots

    async def forget_user(self, user_id: str) -> int:
        uk, k = self.keys.user(user_id), self.keys
        tombstone = user_hash(user_id)

        async def one_round(_a: Attempts) -> tuple[int, int]:
            pipe = self.client.pipeline(transaction=False)
            pipe.zrange(uk.log, 0, -1)
            pipe.smembers(uk.pend)
            entries, pending = await pipe.execute()
            entries, pending = list(entries), sorted(pending)
            sids = [e.split(" ", 1)[0] for e in entries]
            eids = [e.split(" ", 1)[1] for e in entries] + pending
            guards = [k.guard_field(user_id, eid) for eid in eids]
            removed = await self._script(
                "FORGET_LOG",
                [k.stream, k.guards, k.forgotten],
                [tombstone, repr(time.time()), len(sids), *sids, *guards],
            )
            left = await self._script(
                "FORGET_STATE",
                [uk.pos, uk.dis, uk.seen, uk.ids, uk.log, uk.pend],
                [len(entries), *entries, *pending],
            )
            return int(removed), int(left)

        removed = 0
        for _ in range(FORGET_ROUNDS):
            got, left = await retrying(self.config, "forget_user", one_round, trips=3)
            removed += got
            if left == 0:
                return removed
        log.warning(
            "%s: forget_user: appends for the user kept arriving during %d rounds; what arrived "
            "after the erasure started may remain (forget the user again)",
            self.config.redacted(),
            FORGET_ROUNDS,
        )
        return removed
