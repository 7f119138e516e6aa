"""Redis failures map to the store's errors: retried, unavailable, outcome unknown, or a clear error.

Real servers only: the shared one for refused commands, private ones (own
port, temp dir) for a paused, read-only, out-of-memory or killed server.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio.retry
from redis import exceptions as rexc

from feature_store import (
    StoreError,
    StoreOutcomeUnknown,
    StoreUnavailable,
    make_event,
    open_store,
)
from feature_store.redis.conn import is_transient
from feature_store.redis.keys import Keys
from feature_store.redis.store import RedisStore
from feature_store.urls import parse_url
from tests.feature_store.servers import RedisServer, drop_prefix, shared_redis_url

T0 = 1_700_000_000.0


def _ev(eid: str, user: str = "u", item: str = "i", etype: str = "like"):  # type: ignore[no-untyped-def]
    return make_event({"event_id": eid, "user_id": user, "item_id": item, "type": etype, "ts": T0})


@pytest.fixture
def url() -> Iterator[str]:
    u = shared_redis_url(2)
    yield u
    drop_prefix(u)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    srv = RedisServer(tmp_path / "redis")
    srv.start()
    yield srv
    srv.kill()


def test_a_failing_script_writes_nothing(url: str) -> None:
    """WRONGTYPE on a state key: refused before the first write (no log entry, no id, no state)."""
    keys = Keys(parse_url(url).prefix)  # type: ignore[union-attr]
    raw = redis.Redis.from_url(url.split("?")[0], decode_responses=True)
    raw.set(keys.user("u").dis, "not a zset")

    async def go() -> None:
        async with open_store(url) as store:
            with pytest.raises(
                StoreError, match="WRONGTYPE .* expected a zset; nothing was written"
            ):
                await store.append_events([_ev("e1", etype="dislike")])
            assert (await store.read_log(None)).events == []
            assert raw.hlen(keys.user("u").ids) == 0 and raw.llen(keys.user("u").pos) == 0
            raw.delete(keys.user("u").dis)
            assert (await store.append_events([_ev("e1", etype="dislike")])).accepted == 1

    asyncio.run(go())


def test_out_of_memory_is_unavailable_and_writes_nothing(server: RedisServer) -> None:
    async def go() -> None:
        async with open_store(server.url + "?prefix=oom&retries=0") as store:
            await store.append_events([_ev("warm")])
            raw = redis.Redis(port=server.port)
            raw.config_set("maxmemory", 1)  # below what is used: every write is refused
            try:
                with pytest.raises(StoreUnavailable, match="out of memory"):
                    await store.append_events([_ev("e1")])
            finally:
                raw.config_set("maxmemory", 0)
            assert [e.event_id for e in (await store.read_log(None)).events] == ["warm"]

    asyncio.run(go())


def test_read_only_replica_is_retried_then_unavailable(server: RedisServer, tmp_path: Path) -> None:
    primary = RedisServer(tmp_path / "primary")
    primary.start()
    try:
        raw = redis.Redis(port=server.port)

        async def go() -> None:
            url = server.url + "?prefix=ro&retries=2&backoff=0.01"
            async with open_store(url) as store:
                raw.replicaof("127.0.0.1", primary.port)  # a failover demoted our node
                started = time.monotonic()
                with pytest.raises(StoreUnavailable, match="3 attempts: ReadOnlyError"):
                    await store.append_events([_ev("e1")])
                assert time.monotonic() - started < 5
                raw.replicaof("NO", "ONE")  # promoted again: the same call now goes through
                assert (await store.append_events([_ev("e1")])).accepted == 1

        asyncio.run(go())
    finally:
        primary.kill()


def test_a_sent_append_without_reply_is_outcome_unknown(server: RedisServer) -> None:
    """Writes paused on the server: the append times out after sending; the retry settles it."""
    url = server.url + "?prefix=pause&socket_timeout=0.2&retries=1&backoff=0.01"

    async def go() -> None:
        async with open_store(url) as store:
            raw = redis.Redis(port=server.port)
            raw.execute_command("CLIENT", "PAUSE", 1500, "WRITE")
            events = [_ev(f"e{i}", item=f"i{i}") for i in range(3)]
            with pytest.raises(StoreOutcomeUnknown, match="retry with the same event ids"):
                await store.append_events(events)
            raw.execute_command("CLIENT", "UNPAUSE")
            res = await store.append_events(events)
            assert res.accepted + res.duplicates == 3
            assert sorted(e.event_id for e in (await store.read_log(None)).events) == [
                "e0",
                "e1",
                "e2",
            ]

    asyncio.run(go())


def test_a_server_that_is_gone_is_unavailable_not_unknown(server: RedisServer) -> None:
    """Nothing could be sent (reconnecting is refused): the store says so, it is not 'unknown'.

    (A write into a pooled connection the server has just dropped is 'unknown': the
    client cannot tell a crash before the command from one after it.)
    """
    url = server.url + "?prefix=gone&socket_timeout=0.2&retries=1&backoff=0.01"

    async def go() -> None:
        async with open_store(url) as store:
            server.kill()
            await store.client.connection_pool.disconnect()  # the next attempt must reconnect
            with pytest.raises(StoreUnavailable) as info:
                await store.append_events([_ev("e1")])
            assert not isinstance(info.value, StoreOutcomeUnknown)
            with pytest.raises(StoreUnavailable):
                await store.get_user("u")
            assert not await store.ping()

    asyncio.run(go())


def test_every_redis_error_maps_to_the_store_hierarchy() -> None:
    transient = [
        rexc.ConnectionError("reset"),
        rexc.TimeoutError("slow"),
        rexc.BusyLoadingError("LOADING"),
        rexc.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rexc.MasterDownError("MASTERDOWN"),
        rexc.TryAgainError("TRYAGAIN"),
        rexc.ReadOnlyError("READONLY"),
        rexc.ClusterError("TTL exhausted"),
        rexc.SlotNotCoveredError("slot 7 not covered"),
        rexc.RedisClusterException("cannot connect"),
        rexc.InvalidResponse("Protocol error"),
        rexc.ResponseError("BUSY Redis is busy running a script"),
        TimeoutError(),
        ConnectionResetError(),
    ]
    fatal = [
        rexc.AuthenticationError("WRONGPASS"),
        rexc.NoPermissionError("NOPERM"),
        rexc.ResponseError("WRONGTYPE"),
        rexc.DataError("Invalid input"),
        rexc.OutOfMemoryError("OOM"),
    ]
    assert [is_transient(e) for e in transient] == [True] * len(transient)
    assert [is_transient(e) for e in fatal] == [False] * len(fatal)


def test_redis_py_gets_its_asyncio_retry_and_the_url_options(url: str) -> None:
    store = open_store(url + "&health_check_interval=30&socket_keepalive=false")
    assert isinstance(store, RedisStore)
    client = store._make_client()
    kwargs = client.connection_pool.connection_kwargs
    assert isinstance(kwargs["retry"], redis.asyncio.retry.Retry)
    assert (kwargs["health_check_interval"], kwargs["socket_keepalive"]) == (30, False)
