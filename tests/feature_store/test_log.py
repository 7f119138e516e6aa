"""The durable log as the trainer reads it: iter_events and the Parquet export with a cursor.

Runs against both backends (the ``backend`` fixture of conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feature_store import Event, StoreError, make_event, open_store
from feature_store import log as fslog
from tests.feature_store.conftest import Backend

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14 UTC


def _append(url: str, start: int, n: int, *, day_step: float = 0.3) -> list[str]:
    events = [
        make_event(
            {"event_id": f"c{i}", "user_id": f"u{i % 4}", "item_id": f"i{i}", "type": ["like", "dislike", "view"][i % 3],
             "ts": T0 + i * day_step * DAY}
        )
        for i in range(start, start + n)
    ]  # fmt: skip

    async def go() -> None:
        async with open_store(url) as store:
            await store.append_events(events)

    asyncio.run(go())
    return [e.event_id for e in events]


def _log(url: str) -> list[Event]:
    return list(fslog.iter_events(url))


def test_iter_events_is_the_whole_log_in_order(backend: Backend) -> None:
    ids = _append(backend.url, 0, 25)
    assert [e.event_id for e in _log(backend.url)] == ids
    assert _log(backend.url)[0].ts == T0


def test_compaction_exports_each_event_exactly_once(backend: Backend, tmp_path: Path) -> None:
    out = tmp_path / "events"
    first = _append(backend.url, 0, 30)
    r1 = fslog.compact(backend.url, out, consumer="trainer")
    assert (r1.run, r1.new_events, r1.total) == (1, 30, 30)
    # Partitioned by event date; every file is readable Parquet with the full schema.
    dates = sorted(p.name for p in out.glob("date=*"))
    assert dates[0] == "date=2023-11-14" and len(dates) == len(
        {time.strftime("%Y-%m-%d", time.gmtime(T0 + i * 0.3 * DAY)) for i in range(30)}
    )
    assert pq.read_table(r1.files[0]).schema.names == fslog.SCHEMA.names

    r2 = fslog.compact(backend.url, out, consumer="trainer")
    assert (r2.run, r2.new_events, r2.total, r2.files) == (1, 0, 30, [])

    second = _append(backend.url, 30, 20)
    r3 = fslog.compact(backend.url, out, consumer="trainer")
    assert (r3.run, r3.new_events, r3.total) == (2, 20, 50)

    everything = fslog.read_compacted(out)
    assert [e.event_id for e in everything] == first + second  # log order, once each
    assert everything == _log(backend.url)
    new, last_run = fslog.read_new(out, after_run=1)
    assert [e.event_id for e in new] == second and last_run == 2
    assert fslog.read_new(out, after_run=2) == ([], 2)


def test_crash_between_file_write_and_cursor_commit(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "events"
    first = _append(backend.url, 0, 10)
    fslog.compact(backend.url, out)
    second = _append(backend.url, 10, 10, day_step=2.0)  # reaches dates run 1 never wrote

    class Crash(Exception):
        pass

    def crash(_out: Path, _state: dict) -> None:
        raise Crash("killed before the commit")

    with monkeypatch.context() as m:
        m.setattr(fslog, "_commit_state", crash)
        with pytest.raises(Crash):
            fslog.compact(backend.url, out)
    orphans = list(out.glob("date=*/part-r00000002.parquet"))
    assert orphans, "the crashed run should have left its files behind"
    assert [e.event_id for e in fslog.read_compacted(out)] == first  # readers ignore them
    state = json.loads((out / fslog.STATE_FILE).read_text())
    assert state["run"] == 1 and state["total"] == 10

    third = _append(backend.url, 20, 5)
    rerun = fslog.compact(backend.url, out)
    assert (rerun.run, rerun.new_events, rerun.total) == (2, 15, 25)
    ids = [e.event_id for e in fslog.read_compacted(out)]
    assert ids == first + second + third and len(set(ids)) == 25
    # Orphans of the crashed attempt that the re-run did not rewrite are gone.
    assert {p for p in out.glob("date=*/part-*.parquet")} == {
        out / f for f in json.loads((out / fslog.STATE_FILE).read_text())["files"]
    }


def test_export_directory_belongs_to_one_consumer(backend: Backend, tmp_path: Path) -> None:
    _append(backend.url, 0, 3)
    fslog.compact(backend.url, tmp_path / "ev", consumer="pipeline")
    with pytest.raises(StoreError, match="consumer 'pipeline', not 'other'"):
        fslog.compact(backend.url, tmp_path / "ev", consumer="other")


def test_compaction_of_an_empty_log_and_max_events(backend: Backend, tmp_path: Path) -> None:
    empty = fslog.compact(backend.url, tmp_path / "a")
    assert (empty.run, empty.new_events, empty.cursor) == (0, 0, None)
    assert fslog.read_compacted(tmp_path / "a") == []
    ids = _append(backend.url, 0, 12)
    parts = [fslog.compact(backend.url, tmp_path / "b", max_events=5).new_events for _ in range(4)]
    assert parts == [5, 5, 2, 0]
    assert [e.event_id for e in fslog.read_compacted(tmp_path / "b")] == ids


def test_corrupt_state_is_reported(tmp_path: Path) -> None:
    out = tmp_path / "ev"
    out.mkdir()
    (out / fslog.STATE_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable compaction state"):
        fslog.read_compacted(out)
