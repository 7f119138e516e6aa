"""Key layout v1 -> v2 in place: same log (and cursors), state rebuilt, item metadata copied."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from feature_store import open_store
from feature_store.redis.store import RedisStore
from feature_store.redis_migrate import migrate
from feature_store.urls import parse_url
from tests.feature_store.servers import drop_prefix, shared_redis_url
from twotower import cli

T0 = 1_700_000_000.0


@pytest.fixture
def url() -> Iterator[str]:
    u = shared_redis_url(2)
    yield u
    drop_prefix(u)
    prefix = parse_url(u).prefix  # type: ignore[union-attr]
    raw = redis.Redis(port=6379, db=2)
    for key in raw.scan_iter(match=f"{prefix}:v1:*"):
        raw.delete(key)


def _write_v1(url: str) -> list[str]:
    """A v1 store as the previous layout left it: stream, a consumer group, item and user keys."""
    prefix = parse_url(url).prefix  # type: ignore[union-attr]
    raw = redis.Redis(port=6379, db=2, decode_responses=True)
    stream = f"{prefix}:v1:{{log}}:events"
    rows = [("e1", "u", "i1", "like", T0 + 1), ("e2", "u", "bad", "dislike", T0 + 2),
            ("e3", "v", "i1", "view", T0 + 3), ("e1", "u", "i1", "like", T0 + 1),  # logged twice
            ("e4", "u", "i2", "click", T0 + 4)]  # fmt: skip
    sids = [
        raw.xadd(stream, {"event_id": e, "user_id": u, "item_id": i, "type": t, "ts": repr(ts),
                          "received_at": repr(ts)})
        for e, u, i, t, ts in rows
    ]  # fmt: skip
    raw.xgroup_create(stream, "pipeline", id=sids[2])
    raw.set(f"{prefix}:v1:{{i:i1}}:meta", '{"genre": 3}')
    raw.rpush(f"{prefix}:v1:{{u:u}}:pos", "stale")
    return sids


def test_a_v1_store_moves_to_v2_in_place(url: str, caplog: pytest.LogCaptureFixture) -> None:
    sids = _write_v1(url)

    async def go() -> None:
        with caplog.at_level(logging.WARNING, logger="feature_store.redis"):
            store = open_store(url)
            await store.open()
        assert "twotower migrate-redis URL" in caplog.text
        assert isinstance(store, RedisStore)
        try:
            counts = await migrate(store)
            assert counts == {"stream_renamed": 1, "log_entries": 5, "events_applied": 4,
                              "items": 1, "v1_keys_left": 2}  # fmt: skip
            batch = await store.read_log(sids[2])  # an exporter's cursor still means the same
            assert [e.event_id for e in batch.events] == ["e1", "e4"]
            state = await store.get_user("u", with_seen=True)
            assert state.positives == ["i1", "i2"] and state.dislikes == [("bad", T0 + 2)]
            assert await store.get_item_metadata(["i1"]) == {"i1": {"genre": 3}}
            assert (await store.append_events(batch.events[1:])).duplicates == 1  # ids known
            groups = await store.client.xinfo_groups(store.keys.stream)
            assert [g["name"] for g in groups] == ["pipeline"]
            again = await migrate(store, drop_v1=True)
            assert (again["events_applied"], again["v1_keys_left"]) == (0, 0)
            assert await store.forget_user("u") == 4
        finally:
            await store.close()

    asyncio.run(go())


def test_the_command_line_migrates_and_prints_the_counts(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_v1(url)
    assert cli.main(["migrate-redis", url]) == 0
    counts = json.loads(capsys.readouterr().out.strip())
    assert counts == {"stream_renamed": 1, "log_entries": 5, "events_applied": 4,
                      "items": 1, "v1_keys_left": 2}  # fmt: skip
    assert cli.main(["migrate-redis", url, "--drop-v1"]) == 0
    again = json.loads(capsys.readouterr().out.strip())
    assert (again["events_applied"], again["v1_keys_left"]) == (0, 0)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ("sqlite:///{tmp}/s.sqlite", "only Redis stores have key layouts"),
        ("mysql://db/x", "unknown scheme 'mysql'"),
    ],
)
def test_a_store_that_is_no_redis_exits_2(
    store: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["migrate-redis", store.replace("{tmp}", str(tmp_path))]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s.sqlite").exists()
