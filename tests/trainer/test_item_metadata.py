"""Item features through the store: source Dataset -> ingest (item metadata) -> events: Dataset.

The ``events:`` sources, the pipeline's archive and frozen snapshots must give
the model the item features of the original source, under the same names and
with the same values, or a pipeline run cannot warm-start from a version
trained on that source.
"""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
import pytest

from common import artifacts
from feature_store import open_store
from feature_store.archive import METADATA_FILE, compact, read_compacted, read_item_metadata
from feature_store.events import make_event
from tests.feature_store.servers import drop_prefix, shared_redis_url
from trainer.config import TrainerConfig
from trainer.data.dataset import Dataset
from trainer.data.item_metadata import features_from_metadata
from trainer.data.sources import load_source
from trainer.data.vocab import align_items, widen_feature_sizes
from trainer.pipeline.snapshot import ITEMS_FILE, SnapshotError, load_item_metadata, write_snapshot
from trainer.pipeline.steps import events_dataset, warm_version
from twotower.ingest import ingest_dataset, item_metadata

SYNTH = "synthetic:users=60,items=40,events_per_user=12,categories=6,seed=11"


def _ingest(url: str, ds: Dataset) -> None:
    async def go() -> None:
        async with open_store(url) as store:
            await ingest_dataset(store, ds, progress=False)

    asyncio.run(go())


def _by_id(ds: Dataset) -> dict[str, dict[str, int]]:
    """``{feature: {item_id: value}}``: features compared independently of item order."""
    return {
        name: {str(i): int(v) for i, v in zip(ds.item_ids, values, strict=True)}
        for name, values in ds.item_features.items()
    }


def _assert_same_features(got: Dataset, source: Dataset) -> None:
    assert got.item_feature_sizes == source.item_feature_sizes
    assert set(got.item_ids) <= set(source.item_ids)
    expected = {
        name: {i: v for i, v in values.items() if i in set(got.item_ids)}
        for name, values in _by_id(source).items()
    }
    assert _by_id(got) == expected


def test_metadata_rules_unknown_items_other_keys_and_bad_values(caplog) -> None:
    metadata = {
        "a": {"genre": 3, "title": "A", "decade": 9},
        "b": {"genre": "horror", "title": "B"},  # a bad value of a feature key: unknown
        "c": {"genre": 0, "flag": True},
        "d": {"genre": 7},  # not in the data: counts for the vocabulary only
        "e": {"bad name!": 2, "neg": -1},
    }
    with caplog.at_level(logging.WARNING):
        features, sizes = features_from_metadata(np.array(["a", "b", "c", "x"]), metadata)
    assert sizes == {"decade": 10, "genre": 8}
    assert {k: v.tolist() for k, v in features.items()} == {
        "decade": [9, 0, 0, 0],
        "genre": [3, 0, 0, 0],  # x has no metadata: unknown
    }
    assert all(v.dtype == np.int32 for v in features.values())
    assert "'genre': 1 value(s) are not non-negative integers" in caplog.text
    assert "'bad name!' is not usable as a feature name" in caplog.text
    assert features_from_metadata(np.array(["a"]), {}) == ({}, {})


@pytest.mark.parametrize("backend", ["sqlite", "redis"])
def test_synthetic_features_survive_store_export_and_snapshot(backend, tmp_path) -> None:
    source = load_source(SYNTH)
    assert set(source.item_feature_sizes) == {"category"}
    url = f"sqlite:///{tmp_path / 's.sqlite'}" if backend == "sqlite" else shared_redis_url(2)
    try:
        _ingest(url, source)
        from_store = load_source(f"events:{url}")
        _assert_same_features(from_store, source)

        export = tmp_path / "events"
        compact(url, export, consumer="test")
        assert read_item_metadata(export) == {
            i: m for i, m in item_metadata(source).items() if i in set(from_store.item_ids)
        }
    finally:
        if backend == "redis":
            drop_prefix(url)
        else:
            (tmp_path / "s.sqlite").unlink()
    # The archive carries its copy of the metadata: no store needed any more.
    from_export = load_source(f"events:{export}")
    _assert_same_features(from_export, source)

    snap = write_snapshot(
        tmp_path / "art",
        read_compacted(export),
        archive_run=1,
        archived_events=len(source.users),
        warm_version=None,
        item_metadata=read_item_metadata(export),
    )
    meta = json.loads((snap / "snapshot.json").read_text())
    frozen = events_dataset(
        read_compacted(export), "snapshot:x", load_item_metadata(snap, meta), ""
    )
    _assert_same_features(frozen, source)

    (snap / ITEMS_FILE).write_text((snap / ITEMS_FILE).read_text().replace("1", "2"))
    with pytest.raises(SnapshotError, match="checksum"):
        load_item_metadata(snap, meta)
    old = write_snapshot(tmp_path / "art", [], archive_run=1, archived_events=0, warm_version=None)
    assert load_item_metadata(old, json.loads((old / "snapshot.json").read_text())) is None


def test_movielens_genres_survive_the_store(tmp_path) -> None:
    data = tmp_path / "ml"
    data.mkdir()
    t0 = 880_000_000
    rows = [
        (u, i, 5 if (u + i) % 4 else 1, t0 + 10 * u + i) for u in (1, 2, 3) for i in (1, 2, 3, 4)
    ]
    (data / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    flags = {1: 2, 2: 18, 3: None, 4: 5}  # item 2: the last genre flag; item 3: no genre

    def line(item: int, first: int | None) -> str:
        bits = ["0"] * 19
        if first is not None:
            bits[first] = "1"
            bits[-1] = "1" if first != 18 else bits[-1]  # a second flag: the first one counts
        return f"{item}|Movie {item} (1995)|01-Jan-1995||http://x|" + "|".join(bits) + "\n"

    (data / "u.item").write_text("".join(line(i, f) for i, f in flags.items()), encoding="latin-1")
    source = load_source(f"movielens:{data / 'u.data'}")
    assert _by_id(source) == {"genre": {"1": 3, "2": 19, "3": 0, "4": 6}}
    assert source.item_feature_sizes == {"genre": 20}
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    _ingest(url, source)
    _assert_same_features(load_source(f"events:{url}"), source)


def test_a_store_without_metadata_trains_without_features_and_says_why(tmp_path, caplog) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    raws = [
        {"event_id": f"e{n}", "user_id": f"u{n % 3}", "item_id": f"i{n % 5}", "type": "like",
         "ts": 1.7e9 + n}
        for n in range(30)
    ]  # fmt: skip

    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events([make_event(r) for r in raws])
            await store.put_item_metadata({"i1": {"title": "not a feature"}})

    asyncio.run(go())
    ds = load_source(f"events:{url}")
    assert ds.item_features == {} and ds.item_feature_sizes == {}

    # A version trained on a source with genres: the run cold-starts and says why.
    art = tmp_path / "art"
    vdir = artifacts.version_dir(art, "v1")
    vdir.mkdir(parents=True)
    manifest = {"version": "v1", "config": TrainerConfig().as_dict(), "item_feature_sizes": {"genre": 20}}  # fmt: skip
    (vdir / artifacts.MANIFEST).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert warm_version(art, "v1", TrainerConfig(), ds, pinned=False) is None
    assert (
        "not warm-starting from v1: it was trained with item features genre, the training "
        "data has none; the store holds no usable item metadata" in caplog.text
    )
    ds.item_features, ds.item_feature_sizes = {"genre": np.zeros(5, np.int32)}, {"genre": 4}
    assert warm_version(art, "v1", TrainerConfig(), ds, pinned=False) == "v1"


def test_an_export_without_a_metadata_copy_reads_without_features(tmp_path, caplog) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    source = load_source(SYNTH)
    _ingest(url, source)
    export = tmp_path / "events"
    compact(url, export, consumer="test")
    (export / METADATA_FILE).unlink()  # as an older version left it
    with caplog.at_level(logging.WARNING):
        ds = load_source(f"events:{export}")
    assert ds.item_features == {}
    assert "no copy of the store's item metadata" in caplog.text
    compact(url, export, consumer="test")  # the next run, even with nothing new, writes it
    _assert_same_features(load_source(f"events:{export}"), source)


def test_compaction_refreshes_the_copy_when_metadata_changes(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    raws = [
        {"event_id": f"e{n}", "user_id": "u", "item_id": f"i{n}", "type": "like", "ts": 1.7e9 + n}
        for n in range(3)
    ]

    async def put(meta: dict) -> None:
        async with open_store(url) as store:
            await store.append_events([make_event(r) for r in raws])
            await store.put_item_metadata(meta)

    asyncio.run(put({"i0": {"genre": 2}, "other": {"genre": 9}}))
    export = tmp_path / "events"
    compact(url, export, consumer="test")
    assert read_item_metadata(export) == {"i0": {"genre": 2}}  # the exported items only
    asyncio.run(put({"i1": {"genre": 4}}))  # a late catalog load, no new event
    compact(url, export, consumer="test")
    assert read_item_metadata(export) == {"i0": {"genre": 2}, "i1": {"genre": 4}}


def test_warm_start_keeps_the_versions_vocabulary_and_grows_with_new_values() -> None:
    ds = load_source(SYNTH)
    ds.item_feature_sizes = {"category": 5}
    aligned = widen_feature_sizes(align_items(ds, ds.item_ids), {"category": 7, "gone": 3})
    assert aligned.item_feature_sizes == {"category": 7}
    assert ds.item_feature_sizes == {"category": 5}  # untouched
    assert widen_feature_sizes(ds, {"category": 4}).item_feature_sizes == {"category": 5}
