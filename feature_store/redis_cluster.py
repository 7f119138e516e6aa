"""The Redis store on Redis Cluster (``redis://node:port/0?cluster=true``).

Same keys and reads as :mod:`feature_store.redis`; what changes is every
write that would cross slots (a user's ``{u:<id>}`` keys vs the ``{log}``
stream), since a cluster refuses a multi-slot script:

* append, per chunk of events: one pipeline of LOG_ONCE scripts on the
  stream's slot (XADD unless the event's log guard already holds a stream id),
  then one pipeline of APPLY scripts on the users' slots (idempotency key,
  state change, the stream id recorded in the user's log-entry list). The
  call acknowledges only after both, so an acknowledged event is in the log;
  the guard makes a retry after a failure between the two steps reuse the
  first stream entry, so it is in the log once. An event whose call failed
  after step one may be in the log without being acknowledged (as with a lost
  reply in standalone mode).
* forget_user: read the user's log-entry list, delete those stream entries
  and guards (FORGET_LOG, stream slot), then the user's keys (FORGET_STATE).
  A retry after a failure between the two still finds the list and finishes.

The stream is one key, so one node takes every log write; the knob beyond
that is sharding the stream by a hash of the user (``{log:<k>}``) and merging
shards by stream id on read, not needed at this project's scale.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio.cluster as aiocluster
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from feature_store.events import Event
from feature_store.redis import SHA, RedisStore


class RedisClusterStore(RedisStore):
    """:class:`RedisStore` whose writes keep to one slot per script (see the module docstring)."""

    def _make_client(self) -> Any:
        cfg = self.config
        return aiocluster.RedisCluster(
            host=cfg.host,
            port=cfg.port,
            username=cfg.username,
            password=cfg.password,
            ssl=cfg.tls,
            ssl_cert_reqs=cfg.ssl_cert_reqs,
            socket_timeout=cfg.socket_timeout,
            socket_connect_timeout=cfg.connect_timeout or cfg.socket_timeout,
            max_connections=cfg.max_connections,
            decode_responses=True,
            # Our own bounded retries decide; redis-py still follows MOVED/ASK redirections.
            retry=Retry(NoBackoff(), 0),
            cluster_error_retry_attempts=1,
        )

    async def _check_durability(self) -> None:
        try:
            conf: Any = await self._retrying(
                "CONFIG GET", lambda: self.client.config_get("append*", target_nodes="primaries")
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

    async def _append_chunk(self, chunk: list[Event], nonce: str, now: float) -> list[Any]:
        ttl = self.config.idempotency_ttl

        def log_step(pipe: Any) -> None:
            for ev in chunk:
                pipe.execute_command(
                    "EVALSHA", SHA["LOG_ONCE"], 2, self.keys.log_guard(ev.user_id, ev.event_id), self.keys.stream,
                    ttl, ev.event_id, ev.user_id, ev.item_id, ev.type, repr(float(ev.ts)), repr(now),
                )  # fmt: skip

        stream_ids = await self._scripts(log_step)

        def apply_step(pipe: Any) -> None:
            for ev, sid in zip(chunk, stream_ids, strict=True):
                uk = self.keys.user(ev.user_id)
                keys = [uk.idem(ev.event_id), uk.pos, uk.dis, uk.seen, uk.log]
                pipe.execute_command(
                    "EVALSHA",
                    SHA["APPLY"],
                    len(keys),
                    *keys,
                    *self._state_args(ev, nonce, now),
                    sid,
                )

        return await self._scripts(apply_step)

    async def forget_user(self, user_id: str) -> int:
        uk = self.keys.user(user_id)

        async def attempt() -> int:
            entries: Any = await self.client.lrange(uk.log, 0, -1)
            pairs = [e.split(" ", 1) for e in entries]
            removed = 0
            for start in range(0, len(pairs), 1000):
                part = pairs[start : start + 1000]
                guards = [self.keys.log_guard(user_id, eid) for _sid, eid in part]
                removed += int(
                    await self.client.evalsha(
                        SHA["FORGET_LOG"],
                        1 + len(guards),
                        self.keys.stream,
                        *guards,
                        *(sid for sid, _ in part),
                    )
                )
            await self.client.evalsha(
                SHA["FORGET_STATE"], 4, uk.pos, uk.dis, uk.seen, uk.log, f"{uk.tag}:e:"
            )
            return removed

        async def with_scripts() -> int:
            try:
                return await attempt()
            except rexc.NoScriptError:
                await self._load_scripts()
                return await attempt()

        return await self._retrying("forget_user", with_scripts)
