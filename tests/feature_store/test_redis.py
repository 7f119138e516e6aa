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
from feature_store.redis import store as redis_store
from feature_store.redis.keys import Keys
from feature_store.redis.store import RedisStore
from feature_store.urls import parse_url
from tests.feature_store.servers import (
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


def test_one_users_keys_share_a_slot_and_no_two_users_share_a_key(url: str) -> None:
    users = ["user:{odd}", "plain", "plain}", "pl%7Dain", "{u:plain}", "x}:e:plain"]

    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events([e for u in users for e in _events(u, 4)])

    asyncio.run(go())
    keys = Keys(parse_url(url).prefix)  # type: ignore[union-attr]
    raw = _raw(url)
    seen: set[str] = set()
    for user in users:
        uk = keys.user(user)
        names = [uk.pos, uk.dis, uk.seen, uk.ids, uk.log]
        assert all(raw.exists(n) for n in names), names
        assert len({key_slot(n.encode()) for n in names}) == 1
        assert not seen.intersection(names)
        seen.update(names)
        assert raw.hlen(uk.ids) == 4 and raw.zcard(uk.log) == 4
    assert raw.type(keys.stream) == "stream"
    assert raw.hget(keys.meta, "layout") == "v2"
    assert all(k.startswith(keys.base + ":") for k in raw.scan_iter(match=keys.pattern()))


@pytest.mark.parametrize("read_script", [True, False])
def test_state_of_many_users_is_one_round_trip(
    url: str, monkeypatch: pytest.MonkeyPatch, read_script: bool
) -> None:
    calls = {"pipelines": 0, "commands": 0}
    original_execute = Pipeline.execute
    original_command = redis.asyncio.Redis.execute_command
    monkeypatch.setattr(redis_store, "READ_CHUNK", 2)  # 5 users: three READ calls

    async def counting_execute(self: Pipeline, *a: object, **k: object) -> object:
        calls["pipelines"] += 1
        return await original_execute(self, *a, **k)

    async def counting_command(self: object, *a: object, **k: object) -> object:
        calls["commands"] += 1
        return await original_command(self, *a, **k)  # type: ignore[arg-type]

    async def go() -> None:
        async with open_store(url + f"&read_script={str(read_script).lower()}") as store:
            await store.append_events(
                _events("a", 3) + _events("b", 3) + _events("c", 1) + _events("e", 4)
            )
            monkeypatch.setattr(Pipeline, "execute", counting_execute)
            monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counting_command)
            states = await store.get_users(["a", "b", "c", "d", "e"], with_seen=True)
            without_seen = await store.get_users(["e", "a"])
        assert [states[u].positives for u in "abcde"] == [
            ["i0", "i2"],
            ["i0", "i2"],
            ["i0"],
            [],
            ["i0", "i2"],
        ]
        assert [states[u].dislikes for u in "abcde"] == [
            [("i1", T0 + 1)],
            [("i1", T0 + 1)],
            [],
            [],
            [("i1", T0 + 1), ("i3", T0 + 3)],
        ]
        assert [states[u].seen for u in "abcde"] == [
            {"i0", "i1", "i2"},
            {"i0", "i1", "i2"},
            {"i0"},
            set(),
            {"i0", "i1", "i2", "i3"},
        ]
        assert without_seen["e"].seen is None and without_seen["e"].dislikes == states["e"].dislikes
        assert without_seen["a"].positives == ["i0", "i2"]

    asyncio.run(go())
    assert calls == {"pipelines": 2, "commands": 0}  # one per get_users call


def test_ttl_policy(url: str) -> None:
    """state_ttl expires positives and seen only; dislikes and ids only ever go by opt-in or erasure."""
    ttl_url = url + "&state_ttl=120&idempotency_ttl=600"

    async def go(u: str, user: str) -> None:
        async with open_store(u) as store:
            await store.append_events(_events(user, 2))

    asyncio.run(go(ttl_url, "expiring"))
    asyncio.run(go(url, "forever"))
    keys, raw = Keys(parse_url(url).prefix), _raw(url)  # type: ignore[union-attr]
    exp, keep = keys.user("expiring"), keys.user("forever")
    assert all(0 < raw.ttl(k) <= 120 for k in (exp.pos, exp.seen))
    assert raw.ttl(exp.dis) == -1  # a dislike is filtered for good (invariant 1)
    assert 120 < raw.ttl(exp.ids) <= 600  # the opted-into idempotency window
    assert raw.ttl(exp.log) == -1  # the erasure index lives as long as the log entries
    assert all(raw.ttl(k) == -1 for k in (keep.pos, keep.dis, keep.seen, keep.log))
    assert raw.ttl(keep.ids) == -1  # by default a resend is a duplicate however late it comes


def test_dislikes_outlive_state_ttl(url: str) -> None:
    async def go() -> None:
        async with open_store(url + "&state_ttl=1") as store:
            await store.append_events(_events("u", 2))  # i0 liked, i1 disliked
            raw = _raw(url)
            uk = Keys(parse_url(url).prefix).user("u")  # type: ignore[union-attr]
            deadline = time.monotonic() + 5
            while raw.exists(uk.pos) and time.monotonic() < deadline:  # await the expiry
                await asyncio.sleep(0.05)
            state = await store.get_user("u")
            assert state.positives == [] and state.dislikes == [("i1", T0 + 1)]

    asyncio.run(go())


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

    async def lose_first_reply(self: RedisStore, build: object, attempts: object = None) -> list:
        replies = await original(self, build, attempts)  # type: ignore[arg-type]
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


def test_trimming_keeps_the_erasure_indexes_in_step_with_the_stream(url: str) -> None:
    keys, raw = Keys(parse_url(url).prefix), _raw(url)  # type: ignore[union-attr]

    async def go() -> None:
        async with open_store(url + "&log_retention=0") as store:
            await store.append_events(_events("a", 5) + _events("b", 3))
            first = await store.read_log(None, limit=6)  # exported: a's five and one of b's
            assert await store.note_consumed("trainer", first.cursor) == 6
            assert raw.xlen(keys.stream) == 2
            assert raw.zcard(keys.user("a").log) == 0 and raw.zcard(keys.user("b").log) == 2
            assert raw.hlen(keys.user("a").ids) == 5  # the idempotency record stays
            assert (await store.append_events(_events("a", 5))).duplicates == 5
            assert await store.forget_user("b") == 2  # what is still in the stream
            assert raw.xlen(keys.stream) == 0

    asyncio.run(go())
