"""Redis Cluster: the three-step append and the looping erasure, against a private cluster.

Failures are injected between the steps by making one of the store's own
pipelines fail (as a dropped connection would); the servers are real.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis

from feature_store import Event, StoreUnavailable, make_event, open_store
from feature_store.redis.cluster import RedisClusterStore
from tests.feature_store.servers import RedisClusterServers

T0 = 1_700_000_000.0


def _events(user: str, n: int) -> list[Event]:
    return [
        make_event({"event_id": f"{user}-{i}", "user_id": user, "item_id": f"i{i}", "type": ["like", "dislike"][i % 2],
                    "ts": T0 + i})
        for i in range(n)
    ]  # fmt: skip


def _url(cluster: RedisClusterServers, **query: object) -> str:
    extra = "".join(f"&{k}={v}" for k, v in query.items())
    return f"{cluster.url}&prefix=c{uuid.uuid4().hex[:10]}&backoff=0{extra}"


async def _log(store: Any) -> list[tuple[str, str]]:
    return [(e.user_id, e.event_id) for e in (await store.read_log(None, 100_000)).events]


def _fail_call(monkeypatch: pytest.MonkeyPatch, number: int) -> dict[str, int]:
    """Make the store's ``number``-th pipeline (1 = CLAIM, 2 = LOG_ONCE, 3 = APPLY) drop."""
    original = RedisClusterStore._scripts
    calls = {"n": 0}

    async def failing(self: RedisClusterStore, build: object, attempts: object = None) -> list:
        calls["n"] += 1
        if calls["n"] == number:
            raise redis.ConnectionError("connection reset between two steps")
        return await original(self, build, attempts)  # type: ignore[arg-type]

    monkeypatch.setattr(RedisClusterStore, "_scripts", failing)
    return calls


def test_append_failing_between_log_and_state_is_logged_once(
    redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with open_store(_url(redis_cluster)) as store:
            assert isinstance(store, RedisClusterStore)
            calls = _fail_call(monkeypatch, 3)  # LOG_ONCE ran; the connection drops before APPLY
            events = _events("c", 6)
            res = await store.append_events(events)
            assert (res.accepted, res.duplicates) == (6, 0)
            assert calls["n"] >= 6  # claim, log, failed apply, claim, log again (guarded), apply
            assert await _log(store) == [("c", e.event_id) for e in events]  # once each
            state = await store.get_user("c")
            assert state.positives == ["i0", "i2", "i4"] and len(state.dislikes) == 3
            assert await store.forget_user("c") == 6
            assert await _log(store) == [] and not (await store.get_user("c")).known

    asyncio.run(go())


def test_an_unacknowledged_log_entry_is_still_erased(
    redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call dies after LOG_ONCE and is never retried: forget_user still finds its entry."""

    async def go() -> None:
        async with open_store(_url(redis_cluster, retries=0)) as store:
            _fail_call(monkeypatch, 3)
            with pytest.raises(StoreUnavailable):
                await store.append_events(_events("victim", 2))
            assert len(await _log(store)) == 2  # logged, never acknowledged
            monkeypatch.undo()
            assert await store.forget_user("victim") == 2
            assert await _log(store) == []

    asyncio.run(go())


def test_a_late_retry_of_an_unacknowledged_event_reuses_its_log_entry(
    redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def go() -> None:
        async with open_store(_url(redis_cluster, retries=0, log_retention=0)) as store:
            _fail_call(monkeypatch, 3)
            events = _events("late", 1)
            with pytest.raises(StoreUnavailable):
                await store.append_events(events)
            monkeypatch.undo()
            # The entry is exported and trimmed; its guard stays, since the event is pending.
            batch = await store.read_log(None)
            assert await store.note_consumed("trainer", batch.cursor) == 1
            res = await store.append_events(events)
            assert (res.accepted, res.duplicates) == (1, 0)
            assert await _log(store) == []  # not logged a second time
            assert (await store.get_user("late")).positives == ["i0"]
            # A duplicate, however late, is never logged: the idempotency record answers first.
            assert (await store.append_events(events)).duplicates == 1
            assert await _log(store) == []

    asyncio.run(go())


def test_forget_racing_with_an_append_leaves_no_unerasable_entry(
    redis_cluster: RedisClusterServers,
) -> None:
    url = _url(redis_cluster)

    async def go() -> None:
        async with open_store(url) as store, open_store(url) as other:
            assert isinstance(store, RedisClusterStore)
            await store.append_events([make_event({"event_id": "old", "user_id": "v", "item_id": "i0",
                                                   "type": "like", "ts": T0})])  # fmt: skip
            real = store._script
            raced = {"done": False}

            async def script(name: str, keys: Any, args: Any) -> Any:
                out = await real(name, keys, args)
                if name == "FORGET_LOG" and not raced["done"]:  # an append lands right here
                    raced["done"] = True
                    await other.append_events([make_event({"event_id": "new", "user_id": "v",
                                                           "item_id": "i1", "type": "like", "ts": T0 + 1})])  # fmt: skip
                return out

            store._script = script  # type: ignore[method-assign]
            removed = await store.forget_user("v")
            store._script = real  # type: ignore[method-assign]
            assert raced["done"]
            assert removed == 2  # the racing append was erased too, in a second round
            assert await _log(store) == [] and not (await store.get_user("v")).known

    asyncio.run(go())
