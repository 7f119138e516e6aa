"""Redis-specific guarantees: key layout, one round trip, TTLs, bounded failure, retried appends."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Iterator

import pytest
import redis
from redis.asyncio.client import Pipeline
from redis.crc import key_slot

from feature_store import StoreUnavailable, make_event, open_store
from feature_store.keys import Keys
from feature_store.redis import RedisStore
from feature_store.redis_cluster import RedisClusterStore
from feature_store.urls import parse_url
from tests.feature_store.servers import (
    RedisClusterServers,
    drop_prefix,
    free_port,
    shared_redis_url,
)

T0 = 1_700_000_000.0


@pytest.fixture
def url() -> Iterator[str]:
    u = shared_redis_url(2)
    yield u
    drop_prefix(u)


def _raw(url: str) -> redis.Redis:
    cfg = parse_url(url)
    return redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db, decode_responses=True)  # type: ignore[union-attr]


def _events(user: str, n: int) -> list:
    return [
        make_event({"event_id": f"{user}-{i}", "user_id": user, "item_id": f"i{i}", "type": ["like", "dislike"][i % 2],
                    "ts": T0 + i})
        for i in range(n)
    ]  # fmt: skip


def test_one_users_keys_share_a_cluster_slot(url: str) -> None:
    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events(_events("user:{odd}", 4) + _events("plain", 2))

    asyncio.run(go())
    keys = Keys(parse_url(url).prefix)  # type: ignore[union-attr]
    raw = _raw(url)
    for user in ("user:{odd}", "plain"):
        uk = keys.user(user)
        names = [uk.pos, uk.dis, uk.seen, uk.log, uk.idem(f"{user}-0")]
        assert all(raw.exists(n) for n in names), names
        assert len({key_slot(n.encode()) for n in names}) == 1
    assert raw.type(keys.stream) == "stream"
    assert all(k.startswith(keys.base + ":") for k in raw.scan_iter(match=keys.pattern()))


def test_state_of_many_users_is_one_round_trip(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"pipelines": 0, "commands": 0}
    original_execute = Pipeline.execute
    original_command = redis.asyncio.Redis.execute_command

    async def counting_execute(self: Pipeline, *a: object, **k: object) -> object:
        calls["pipelines"] += 1
        return await original_execute(self, *a, **k)

    async def counting_command(self: object, *a: object, **k: object) -> object:
        calls["commands"] += 1
        return await original_command(self, *a, **k)  # type: ignore[arg-type]

    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events(_events("a", 3) + _events("b", 3) + _events("c", 1))
            monkeypatch.setattr(Pipeline, "execute", counting_execute)
            monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counting_command)
            states = await store.get_users(["a", "b", "c", "d", "e"], with_seen=True)
            assert states["a"].positives == ["i0", "i2"] and states["b"].dislikes == [
                ("i1", T0 + 1)
            ]

    asyncio.run(go())
    assert calls == {"pipelines": 1, "commands": 0}


def test_ttl_policy(url: str) -> None:
    ttl_url = url + "&state_ttl=120&idempotency_ttl=600"

    async def go(u: str, user: str) -> None:
        async with open_store(u) as store:
            await store.append_events(_events(user, 2))

    asyncio.run(go(ttl_url, "expiring"))
    asyncio.run(go(url, "forever"))
    keys, raw = Keys(parse_url(url).prefix), _raw(url)  # type: ignore[union-attr]
    exp, keep = keys.user("expiring"), keys.user("forever")
    assert all(0 < raw.ttl(k) <= 120 for k in (exp.pos, exp.dis, exp.seen))
    assert 120 < raw.ttl(exp.idem("expiring-0")) <= 600
    assert raw.ttl(exp.log) == -1  # the erasure index lives as long as the log entries
    assert all(raw.ttl(k) == -1 for k in (keep.pos, keep.dis, keep.seen))
    assert 0 < raw.ttl(keep.idem("forever-0")) <= 7 * 86400


def test_warns_when_redis_has_no_aof(url: str, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> dict[str, str]:
        async with open_store(url) as store:
            assert isinstance(store, RedisStore)
            return store.durability

    with caplog.at_level(logging.WARNING, logger="feature_store.redis"):
        durability = asyncio.run(go())
    if durability.get("appendonly") == "no":
        assert "without AOF" in caplog.text
    else:
        assert "without AOF" not in caplog.text


def test_unreachable_server_fails_fast_with_store_unavailable() -> None:
    port = free_port()  # nothing listens there
    store = open_store(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&retries=2&backoff=0.01")
    started = time.monotonic()
    with pytest.raises(StoreUnavailable, match="3 attempts"):
        asyncio.run(store.open())
    assert time.monotonic() - started < 2.0


def test_silent_server_never_hangs_past_the_timeout() -> None:
    # A socket that completes the TCP handshake (kernel backlog) but never answers.
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        store = open_store(f"redis://127.0.0.1:{port}/0?socket_timeout=0.2&retries=1&backoff=0.01")
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="2 attempts"):
            asyncio.run(store.open())
        elapsed = time.monotonic() - started
    assert 0.3 < elapsed < 1.5, elapsed


def test_append_retried_after_a_lost_reply_counts_each_event_once(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = RedisStore._scripts
    state = {"failed": False}

    async def lose_first_reply(self: RedisStore, build: object) -> list:
        replies = await original(self, build)  # type: ignore[arg-type]
        if not state["failed"]:
            state["failed"] = True  # the scripts ran, but the caller never saw the replies
            raise redis.ConnectionError("connection reset after the write")
        return replies

    monkeypatch.setattr(RedisStore, "_scripts", lose_first_reply)

    async def go() -> None:
        async with open_store(url + "&backoff=0") as store:
            events = _events("r", 5)
            res = await store.append_events(events)
            assert (res.accepted, res.duplicates) == (5, 0)  # applied by attempt 1, confirmed by 2
            again = await store.append_events(events)
            assert (again.accepted, again.duplicates) == (0, 5)
            batch = await store.read_log(None)
            assert [e.event_id for e in batch.events] == [e.event_id for e in events]

    asyncio.run(go())
    assert state["failed"]


def test_cluster_append_failing_between_log_and_state_is_logged_once(
    redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"{redis_cluster.url}&prefix=between&backoff=0"
    original = RedisClusterStore._scripts
    calls = {"n": 0}

    async def fail_before_second_step(self: RedisClusterStore, build: object) -> list:
        calls["n"] += 1
        if calls["n"] == 2:  # LOG_ONCE ran; the connection drops before APPLY
            raise redis.ConnectionError("connection reset between the two steps")
        return await original(self, build)  # type: ignore[arg-type]

    async def go() -> None:
        async with open_store(url) as store:
            assert isinstance(store, RedisClusterStore)
            monkeypatch.setattr(RedisClusterStore, "_scripts", fail_before_second_step)
            events = _events("c", 6)
            res = await store.append_events(events)
            assert (res.accepted, res.duplicates) == (6, 0)
            logged = (await store.read_log(None)).events
            assert [e.event_id for e in logged] == [e.event_id for e in events]  # once each
            state = await store.get_user("c")
            assert state.positives == ["i0", "i2", "i4"] and len(state.dislikes) == 3
            assert await store.forget_user("c") == 6
            assert (await store.read_log(None)).events == [] and not (
                await store.get_user("c")
            ).known

    asyncio.run(go())
    assert calls["n"] >= 4  # log, failed apply, log again (guarded), apply
