"""``twotower ingest``: dataset rows -> events, deterministic ids, re-runs add nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from feature_store import make_event, open_store
from tests.feature_store.servers import drop_prefix, shared_redis_url
from trainer.data.dataset import DISLIKE, POSITIVE, Dataset
from twotower import cli
from twotower.ingest import UNTIMED_BASE_TS, events_from_dataset, ingest_dataset, item_metadata

ML100K = Path(__file__).resolve().parents[3] / "shared" / "data" / "ml-100k" / "u.data"


def _dataset(kind: str, ts: list[float]) -> Dataset:
    # Rows sorted by (user, time) as the readers deliver them; row 2 repeats row 1 exactly.
    return Dataset(
        source=f"{kind}:hand-made",
        kind=kind,
        user_ids=np.array(["alice", "bob"]),
        item_ids=np.array(["m1", "m2", "m3"]),
        users=np.array([0, 0, 0, 0, 1], np.int32),
        items=np.array([0, 1, 1, 2, 2], np.int32),
        labels=np.array([POSITIVE, DISLIKE, DISLIKE, POSITIVE, POSITIVE], np.int8),
        ts=np.array(ts, np.float64),
        split=np.zeros(5, np.int8),
        timestamped=kind != "lightgcn",
    )


def test_rows_become_events_with_deterministic_ids() -> None:
    ds = _dataset("movielens", [8.8e8, 8.8e8 + 1, 8.8e8 + 1, 8.8e8 + 2, 8.9e8])
    events = list(events_from_dataset(ds))
    assert [(e.user_id, e.item_id, e.type, e.ts) for e in events] == [
        ("alice", "m1", "like", 8.8e8),
        ("alice", "m2", "dislike", 8.8e8 + 1),
        ("alice", "m2", "dislike", 8.8e8 + 1),
        ("alice", "m3", "like", 8.8e8 + 2),
        ("bob", "m3", "like", 8.9e8),
    ]
    ids = [e.event_id for e in events]
    assert len(set(ids)) == 5  # an exact repeat is a second occurrence, not a duplicate
    assert ids == [e.event_id for e in events_from_dataset(ds)]
    other_kind = [e.event_id for e in events_from_dataset(_dataset("synthetic", list(ds.ts)))]
    assert set(other_kind).isdisjoint(ids)


def test_untimed_sources_get_per_user_order_times() -> None:
    ds = _dataset("lightgcn", [float("nan")] * 5)
    ts = [e.ts for e in events_from_dataset(ds)]
    base = UNTIMED_BASE_TS
    assert ts == [base, base + 1, base + 2, base + 3, base]


def test_ingest_twice_adds_nothing(tmp_path: Path) -> None:
    ds = _dataset("movielens", [8.8e8, 8.8e8 + 1, 8.8e8 + 1, 8.8e8 + 2, 8.9e8])

    async def go() -> None:
        async with open_store(f"sqlite:///{tmp_path / 's.sqlite'}") as store:
            first = await ingest_dataset(store, ds, progress=False, batch_size=2)
            assert (first.accepted, first.duplicates) == (5, 0)
            second = await ingest_dataset(store, ds, progress=False)
            assert (second.accepted, second.duplicates) == (0, 5)
            alice = await store.get_user("alice")
            assert alice.positives == ["m1", "m3"] and alice.dislikes == [("m2", 8.8e8 + 1)]

    asyncio.run(go())


def test_item_features_become_item_metadata(tmp_path: Path) -> None:
    ds = _dataset("movielens", [8.8e8, 8.8e8 + 1, 8.8e8 + 1, 8.8e8 + 2, 8.9e8])
    ds.item_features["genre"] = np.array([3, 0, 7], np.int32)  # m2's genre is unknown
    ds.item_feature_sizes["genre"] = 8
    assert item_metadata(ds) == {"m1": {"genre": 3}, "m3": {"genre": 7}}

    async def go() -> None:
        async with open_store(f"sqlite:///{tmp_path / 's.sqlite'}") as store:
            await ingest_dataset(store, ds, progress=False)
            got = await store.get_item_metadata(["m1", "m2", "m3"])
            assert got == {"m1": {"genre": 3}, "m3": {"genre": 7}}

    asyncio.run(go())


def test_an_events_source_is_copied_with_its_ids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, target = f"sqlite:///{tmp_path / 'a.sqlite'}", f"sqlite:///{tmp_path / 'b.sqlite'}"
    raws = [
        {"event_id": f"orig-{i}", "user_id": f"u{i % 2}", "item_id": f"i{i % 3}",
         "type": ["view", "click", "impression", "dislike"][i % 4], "ts": 1.6e9 + i}
        for i in range(8)
    ]  # fmt: skip

    async def seed() -> None:
        async with open_store(source) as store:
            await store.append_events([make_event(r) for r in raws])
            await store.put_item_metadata({"i1": {"title": "One"}})

    asyncio.run(seed())
    argv = ["ingest", "--data", f"events:{source}", "--store", target]
    assert cli.main(argv) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (first["events"], first["accepted"], first["items_with_metadata"]) == (8, 8, 1)
    assert cli.main(argv) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (second["accepted"], second["duplicates"]) == (0, 8)

    async def check() -> None:
        async with open_store(target) as store:
            copied = (await store.read_log(None)).events
            assert [(e.event_id, e.type, e.ts) for e in copied] == [
                (r["event_id"], r["type"], r["ts"]) for r in raws
            ]
            assert await store.get_item_metadata(["i1", "i2"]) == {"i1": {"title": "One"}}

    asyncio.run(check())


def test_bad_store_url_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["ingest", "--data", "synthetic", "--store", "mysql://db/x"]) == 2
    assert "unknown scheme 'mysql'" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_ingest_ml100k_command(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert ML100K.exists(), f"reference data missing: {ML100K}"
    url = f"sqlite:///{tmp_path / 'ml.sqlite'}" if backend == "sqlite" else shared_redis_url(2)
    try:
        argv = ["ingest", "--data", f"movielens:{ML100K}", "--store", url]
        assert cli.main(argv) == 0
        first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        # u.data: 100,000 ratings, of which ratings 3 are neither positive nor dislike.
        ratings = np.loadtxt(ML100K, dtype=np.int64)[:, 2]
        expected = int(((ratings >= 4) | (ratings <= 2)).sum())
        assert first["events"] == first["accepted"] == expected and first["duplicates"] == 0
        assert first["seconds"] < 60
        assert first["items_with_metadata"] > 1500  # u.item: 1682 movies, most with a genre
        assert cli.main(argv) == 0
        second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (second["accepted"], second["duplicates"]) == (0, expected)

        async def check() -> None:
            async with open_store(url) as store:
                assert set((await store.get_item_metadata(["1"]))["1"]) == {"genre"}
                state = await store.get_user("1", with_seen=True)
                assert 0 < len(state.positives) <= 200 and state.dislikes and state.seen
                assert len((await store.read_log(None, 200_000)).events) == expected

        asyncio.run(check())
    finally:
        if backend == "redis":
            drop_prefix(url)
