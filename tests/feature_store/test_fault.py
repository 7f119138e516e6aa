"""Redis dies mid-stream of appends: nothing acknowledged may be missing afterwards.

A private redis-server (AOF, ``appendfsync always``) takes appends of one or
several events from several concurrent writers; a killer thread SIGKILLs it
once enough appends were acknowledged, while others are in flight. Every
append must end as acknowledged, StoreOutcomeUnknown (maybe applied) or
plain StoreUnavailable (nothing applied), within the bound its timeouts
imply; after a restart from the AOF, every acknowledged event is in the log
exactly once and in the state, and no event of a "nothing applied" call is.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
import redis

from feature_store import StoreOutcomeUnknown, StoreUnavailable, make_event, open_store
from feature_store.redis.config import RedisConfig
from feature_store.urls import parse_url
from tests.feature_store.servers import RedisServer

T0 = 1_700_000_000.0
WRITERS = 4
PER_WRITER = 150
KILL_AFTER_ACKS = 80


def _failure_bound(cfg: RedisConfig, size: int) -> float:
    """Longest a failed append may take by its configuration (generously: x2, + 1 s)."""
    attempt = cfg.socket_timeout * (1 + size / 1000)
    backoffs = sum(min(cfg.backoff * 2**a, 1.0) for a in range(cfg.retries))
    return 2 * ((cfg.retries + 1) * attempt + backoffs) + 1.0


@pytest.mark.parametrize("batch", [1, 4])
def test_kill_mid_stream_loses_nothing_acknowledged(tmp_path: Path, batch: int) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    url = f"{server.url}?prefix=fault&socket_timeout=0.3&retries=1&backoff=0.01&positives_cap=1000"
    cfg = parse_url(url)
    assert isinstance(cfg, RedisConfig)
    bound = _failure_bound(cfg, batch)
    acked: list[str] = []
    failed: list[str] = []
    not_applied: list[str] = []
    slowest_failure = 0.0
    enough = threading.Event()
    killed = threading.Event()

    def killer() -> None:
        enough.wait(60)
        server.kill()
        killed.set()

    async def writer(store, w: int) -> None:  # type: ignore[no-untyped-def]
        nonlocal slowest_failure
        failures_after_kill = 0
        for start in range(0, PER_WRITER, batch):
            events = [
                make_event(
                    {"event_id": f"w{w}-{i}", "user_id": f"u{w}", "item_id": f"i{i}", "type": "like",
                     "ts": T0 + i}
                )
                for i in range(start, min(start + batch, PER_WRITER))
            ]  # fmt: skip
            ids = [e.event_id for e in events]
            began = time.monotonic()
            try:
                res = await store.append_events(events)
            except StoreUnavailable as exc:
                slowest_failure = max(slowest_failure, time.monotonic() - began)
                failed.extend(ids)
                if not isinstance(exc, StoreOutcomeUnknown):
                    not_applied.extend(ids)
                if killed.is_set():
                    failures_after_kill += 1
                    if failures_after_kill >= 3:
                        return
                continue
            assert (res.accepted, res.duplicates) == (len(events), 0)
            acked.extend(ids)
            if len(acked) >= KILL_AFTER_ACKS:
                enough.set()

    async def run_writers() -> None:
        async with open_store(url) as store:
            await asyncio.gather(*(writer(store, w) for w in range(WRITERS)))

    thread = threading.Thread(target=killer)
    thread.start()
    try:
        asyncio.run(run_writers())
        thread.join(60)
        assert killed.is_set(), "the server was never killed"
        assert failed, "no append failed although the server was killed"
        assert slowest_failure < bound, (slowest_failure, bound)
        server.start()  # same dir and port: loads the AOF

        async def check() -> None:
            async with open_store(url) as store:
                logged, cursor = [], None
                while (batch := await store.read_log(cursor, 1000)).events:
                    logged.extend(batch.events)
                    cursor = batch.cursor
                ids = [e.event_id for e in logged]
                assert len(ids) == len(set(ids)), "an event is in the log twice"
                assert set(acked) <= set(ids), (
                    f"acknowledged but lost: {sorted(set(acked) - set(ids))[:5]}"
                )
                assert set(ids) <= set(acked) | set(failed)
                assert not set(ids) & set(not_applied), "a call said nothing was applied, wrongly"
                # State and log moved together: each logged event is in its user's state.
                states = await store.get_users([f"u{w}" for w in range(WRITERS)])
                assert sum(len(s.positives) for s in states.values()) == len(ids)
                # Retrying the failed appends completes the stream without duplicates.
                retry = [
                    make_event({"event_id": eid, "user_id": f"u{eid[1]}", "item_id": f"i{eid.split('-')[1]}",
                                "type": "like", "ts": T0 + int(eid.split("-")[1])})
                    for eid in failed
                ]  # fmt: skip
                res = await store.append_events(retry)
                assert res.accepted == len(set(failed) - set(ids))
                assert res.accepted + res.duplicates == len(failed)

        asyncio.run(check())
    finally:
        server.kill()


def test_scripts_reload_after_script_flush(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:

        async def go() -> None:
            async with open_store(server.url + "?prefix=ns") as store:
                ev = [
                    make_event(
                        {"event_id": f"e{i}", "user_id": "u", "item_id": f"i{i}", "type": "like"}
                    )
                    for i in range(3)
                ]
                assert (await store.append_events(ev[:1])).accepted == 1
                redis.Redis(port=server.port).script_flush()  # as after a failover to a fresh node
                assert (await store.append_events(ev)).accepted == 2
                redis.Redis(port=server.port).script_flush()
                assert (await store.get_users(["u"]))["u"].positives == ["i0", "i1", "i2"]
                assert await store.forget_user("u") == 3

        asyncio.run(go())
    finally:
        server.kill()
