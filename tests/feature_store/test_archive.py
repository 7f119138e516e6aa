"""The durable log as the trainer reads it: iter_events and the Parquet export with a cursor.

Runs against both backends (the ``backend`` fixture of conftest.py).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from feature_store import Event, StoreError, export_files, export_state, make_event, open_store
from feature_store import archive as fslog
from feature_store.export_state import STATE_FILE
from tests.feature_store.conftest import Backend
from tests.feature_store.servers import drop_prefix
from twotower import cli

DAY = 86400.0
T0 = 1_700_000_000.0  # 2023-11-14 UTC


def _read_new(out: Path, after_run: int) -> tuple[list[Event], int]:
    """Events of the runs committed after ``after_run`` and the last committed run: what a
    reader that remembers its run number sees (each event exactly once)."""
    with export_state.locked(out, exclusive=False):
        state = export_state.load_state(out)
        tombstones = dict(state.get("tombstones") or {})
        events = export_files.read_events(out, list(state["files"]), after_run, tombstones)
    return events, int(state["run"])


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
    new, last_run = _read_new(out, after_run=1)
    assert [e.event_id for e in new] == second and last_run == 2
    assert _read_new(out, after_run=2) == ([], 2)


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
    state = json.loads((out / STATE_FILE).read_text())
    assert state["run"] == 1 and state["total"] == 10

    third = _append(backend.url, 20, 5)
    rerun = fslog.compact(backend.url, out)
    assert (rerun.run, rerun.new_events, rerun.total) == (2, 15, 25)
    ids = [e.event_id for e in fslog.read_compacted(out)]
    assert ids == first + second + third and len(set(ids)) == 25
    # Orphans of the crashed attempt that the re-run did not rewrite are gone.
    assert {p for p in out.glob("date=*/part-*.parquet")} == {
        out / f for f in json.loads((out / STATE_FILE).read_text())["files"]
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
    (out / STATE_FILE).write_text("{not json")
    with pytest.raises(StoreError, match="unreadable compaction state"):
        fslog.read_compacted(out)


def _ids(url: str) -> list[str]:
    return [e.event_id for e in _log(url)]


def test_the_log_keeps_what_any_consumer_has_not_exported(backend: Backend, tmp_path: Path) -> None:
    url = backend.with_options(log_retention=0)
    ids = _append(url, 0, 12)
    assert _trim(url, far_future=True) == 0  # no consumer registered yet: nothing may go
    fslog.compact(url, tmp_path / "fast", consumer="fast")  # registers, trims what only it needed
    assert _ids(url) == []  # retention 0: every entry went once its only consumer had it
    more = _append(url, 12, 10)
    fslog.compact(url, tmp_path / "slow", consumer="slow", max_events=4)
    assert _ids(url) == more  # "slow" registered after the trim; it starts from what is left
    fslog.compact(url, tmp_path / "fast", consumer="fast")
    assert _ids(url) == more[4:]  # "slow" has exported only 4 of them
    assert _trim(url, far_future=True) == 0
    rest = fslog.compact(url, tmp_path / "slow", consumer="slow")
    assert rest.new_events == 6 and _ids(url) == []
    assert [e.event_id for e in fslog.read_compacted(tmp_path / "fast")] == ids + more
    assert [e.event_id for e in fslog.read_compacted(tmp_path / "slow")] == more


def test_retention_keeps_exported_entries_for_a_while(backend: Backend, tmp_path: Path) -> None:
    url = backend.with_options(log_retention=3600)
    ids = _append(url, 0, 5)
    fslog.compact(url, tmp_path / "ev")
    assert _ids(url) == ids  # exported, but not an hour ago
    assert _trim(url, now=time.time() + 1800) == 0
    assert _trim(url, now=time.time() + 3700) == 5
    assert _ids(url) == []
    forever = backend.with_options(log_retention=-1)
    kept = _append(forever, 5, 3)
    fslog.compact(forever, tmp_path / "ev")
    assert _trim(forever, far_future=True) == 0 and _ids(forever) == kept


def _trim(url: str, *, now: float | None = None, far_future: bool = False) -> int:
    async def go() -> int:
        async with open_store(url) as store:
            return await store.trim_log(now=time.time() + 10 * DAY if far_future else now)

    return asyncio.run(go())


def test_forget_user_purges_exported_files(backend: Backend, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    ids = _append(backend.url, 0, 16)  # users u0..u3
    fslog.compact(backend.url, out)

    async def forget() -> int:
        async with open_store(backend.url) as store:
            return await store.forget_user("u1")

    assert asyncio.run(forget()) == 4
    assert "u1" in {e.user_id for e in fslog.read_compacted(out)}  # not purged yet...
    assert "u1" not in {
        e.user_id for e in fslog.read_compacted(out, url=backend.url)
    }  # ...but hidden
    comeback = make_event({"event_id": "back", "user_id": "u1", "item_id": "x", "type": "like",
                           "ts": T0 + 99})  # fmt: skip
    asyncio.run(_append_events(backend.url, [comeback]))
    res = fslog.compact(backend.url, out)
    assert (res.purged, res.new_events, res.total) == (4, 1, 13)
    on_disk = {
        u for p in out.glob("date=*/*.parquet") for u in pq.read_table(p)["user_id"].to_pylist()
    }
    assert on_disk == {"u0", "u1", "u2", "u3"}  # u1 only by the event after the erasure
    rows = [pq.read_table(p).to_pylist() for p in out.glob("date=*/*.parquet")]
    assert [r["event_id"] for f in rows for r in f if r["user_id"] == "u1"] == ["back"]
    kept = [i for i in ids if int(i[1:]) % 4 != 1] + ["back"]
    assert [e.event_id for e in fslog.read_compacted(out)] == kept  # log order kept
    state = json.loads((out / STATE_FILE).read_text())
    assert {out / f for f in state["files"]} == set(out.glob("date=*/part-*.parquet"))
    assert "u1" not in json.dumps(state)  # tombstones are hashes
    assert fslog.compact(backend.url, out).purged == 0  # applied once


async def _append_events(url: str, events: list[Event]) -> None:
    async with open_store(url) as store:
        await store.append_events(events)


def test_a_crash_during_a_purge_leaves_the_committed_files(
    backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "ev"
    _append(backend.url, 0, 8)
    fslog.compact(backend.url, out)
    before = sorted(p.name for p in out.glob("date=*/*.parquet"))

    async def forget() -> None:
        async with open_store(backend.url) as store:
            await store.forget_user("u2")

    asyncio.run(forget())

    def crash(_out: Path, _state: dict) -> None:
        raise RuntimeError("killed before the commit")

    with monkeypatch.context() as m:
        m.setattr(fslog, "_commit_state", crash)
        with pytest.raises(RuntimeError):
            fslog.compact(backend.url, out)
    assert len(fslog.read_compacted(out)) == 8  # the old state, whole
    assert fslog.compact(backend.url, out).purged == 2
    assert sorted(p.name for p in out.glob("date=*/*.parquet")) != before
    assert len(fslog.read_compacted(out)) == 6


def test_the_cursor_refuses_another_store(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "ev"
    first = _append(backend.url, 0, 5)
    fslog.compact(backend.url, out)
    if backend.name == "sqlite":  # the file is recreated (restored volume, new disk)
        path = Path(backend.url.split("sqlite:///", 1)[1])
        for f in path.parent.glob(path.name + "*"):
            f.unlink()
        other = backend.url
    else:  # another prefix: another store
        other = backend.with_options(prefix=f"o{uuid.uuid4().hex[:10]}")
    later = _append(other, 100, 3)
    with pytest.raises(
        fslog.StoreIdentityError, match=r"exported from store .* `twotower archive rebind "
    ):
        fslog.compact(other, out)
    assert [e.event_id for e in fslog.read_compacted(out)] == first
    try:
        assert cli.main(["archive", "rebind", str(out), "--store", other]) == 0
        said = capsys.readouterr().out
        assert said.startswith(f"{out}: bound to ") and "exports its log from the start" in said
        res = fslog.compact(other, out)
        assert res.new_events == 3
        assert [e.event_id for e in fslog.read_compacted(out)] == first + later
    finally:
        if backend.name == "redis":
            drop_prefix(other)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/ev", "--store", "mysql://db/x"], "unknown scheme 'mysql'"),
        (["{tmp}", "--store", "sqlite:///{tmp}/s.sqlite"], "not an export directory"),
        (["{tmp}/ev", "--store", "sqlite:///{tmp}/none.sqlite"], "no store file"),
    ],
)
def test_a_rebind_with_bad_input_exits_2_and_changes_nothing(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    _append(url, 0, 3)
    fslog.compact(url, tmp_path / "ev")
    before = (tmp_path / "ev" / STATE_FILE).read_text()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert cli.main(["archive", "rebind", *argv]) == 2
    assert message in capsys.readouterr().err
    assert (tmp_path / "ev" / STATE_FILE).read_text() == before
    assert not (tmp_path / STATE_FILE).exists() and not (tmp_path / "none.sqlite").exists()


def test_an_unexportable_event_is_named(tmp_path: Path) -> None:
    """A poisoned row (written before ts was checked) stops the export with its id, not OSError."""
    url = f"sqlite:///{tmp_path / 's.sqlite'}"
    _append(url, 0, 2)
    conn = sqlite3.connect(tmp_path / "s.sqlite")
    conn.execute("UPDATE log SET ts = -1e18 WHERE event_id = 'c1'")
    conn.commit()
    conn.close()
    with pytest.raises(
        StoreError, match=r"log event 'c1' of user 'u1' .* ts=-1e\+18, which is not a date"
    ):
        fslog.compact(url, tmp_path / "ev")
    assert not (tmp_path / "ev" / STATE_FILE).exists()
