"""The event log as the trainer sees it: a reader and a crash-safe Parquet export.

``iter_events(url)`` yields every event in the store's durable log, in log
order (the ``events:URL`` data source).

``compact(url, out_dir)`` exports the events appended since the last run to
Parquet, partitioned by event date, and moves a cursor, so each pipeline run
reads only new events, each exactly once. Layout::

    out_dir/
      _cursor.json                      committed state (see below)
      .lock                             flock held by a running compaction
      date=YYYY-MM-DD/part-r00000007.parquet   one file per (run, date)

``_cursor.json`` = ``{"consumer", "cursor", "run", "total", "files": [...]}``:
the store cursor after the last exported event, the number of the last
committed run, the event count of all committed runs and every committed
file (relative paths). Readers trust only this file.

Protocol of one run (under the lock):

1. read the committed state; delete files of runs above the committed one
   (left by a crash between steps 3 and 4);
2. read the log after the committed cursor;
3. write run ``r+1``'s files: temp file, fsync, ``os.replace``, fsync dir;
4. commit: write ``_cursor.json`` the same way (the commit point);
5. tell the store (``note_consumed``: a Redis consumer group or a SQLite
   table) for lag monitoring; best effort.

A crash before 4 leaves the old state: the re-run deletes the orphan files,
reads the same events again and rewrites run ``r+1``, so nothing is lost or
duplicated. A crash after 4 is a completed run. Each row carries ``run`` and
``pos`` (its position in the run) so readers restore log order.

Erasure: :meth:`OnlineStore.forget_user` removes a user from the store's log,
not from files already exported here; delete and re-export the directory
(with a fresh consumer) to purge those too.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import json
import os
import threading
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from feature_store.base import OnlineStore, StoreError
from feature_store.events import Event

T = TypeVar("T")

STATE_FILE = "_cursor.json"
LOCK_FILE = ".lock"
PAGE = 10_000
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("user_id", pa.string()),
        ("item_id", pa.string()),
        ("type", pa.string()),
        ("ts", pa.float64()),
        ("received_at", pa.float64()),
        ("run", pa.int64()),
        ("pos", pa.int64()),
    ]
)


@dataclass(frozen=True)
class CompactResult:
    """Outcome of :func:`compact`.

    Attributes:
      out_dir: the export directory.
      run: number of the last committed run (unchanged when nothing was new).
      new_events: events exported by this call.
      total: events in all committed runs.
      cursor: the committed store cursor (None before the first export).
      files: files written by this call.
    """

    out_dir: Path
    run: int
    new_events: int
    total: int
    cursor: str | None
    files: list[Path] = field(default_factory=list)


class _LoopThread:
    """An event loop in a helper thread, so sync code can drive an async store step by step."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="feature-store-log", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@contextlib.contextmanager
def _opened(url: str) -> Iterator[tuple[_LoopThread, OnlineStore]]:
    from feature_store import open_store

    runner = _LoopThread()
    store = open_store(url)
    try:
        runner.run(store.open())
        yield runner, store
    finally:
        with contextlib.suppress(Exception):
            runner.run(store.close())
        runner.stop()


def _pages(
    runner: _LoopThread, store: OnlineStore, cursor: str | None, limit: int | None
) -> Iterator[tuple[list[Event], str]]:
    taken = 0
    while limit is None or taken < limit:
        page = PAGE if limit is None else min(PAGE, limit - taken)
        batch = runner.run(store.read_log(cursor, page))
        if not batch.events:
            return
        cursor = batch.cursor
        taken += len(batch.events)
        yield batch.events, cursor


def iter_events(url: str) -> Iterator[Event]:
    """Every event in the durable log of the store at ``url``, in log order (sync)."""
    with _opened(url) as (runner, store):
        for events, _cursor in _pages(runner, store, None, None):
            yield from events


# -- the export ----------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _durable_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    _fsync_dir(final.parent)


def _load_state(out: Path) -> dict[str, Any]:
    path = out / STATE_FILE
    if not path.exists():
        return {"consumer": None, "cursor": None, "run": 0, "total": 0, "files": []}
    try:
        state = json.loads(path.read_text())
        for key in ("cursor", "run", "total", "files"):
            state[key]  # noqa: B018 - presence check
    except (ValueError, KeyError) as exc:
        raise StoreError(
            f"{path}: unreadable compaction state ({exc}); restore it or start a new directory"
        ) from exc
    return state


def _commit_state(out: Path, state: dict[str, Any]) -> None:
    """The commit point of a run (tests replace it to simulate a crash just before it)."""
    tmp = out / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    _durable_replace(tmp, out / STATE_FILE)


def _run_of(path: Path) -> int:
    return int(path.stem.rsplit("-r", 1)[1])


def _remove_orphans(out: Path, committed_run: int) -> None:
    for path in out.glob("date=*/part-r*.parquet"):
        if _run_of(path) > committed_run:
            path.unlink()
    for path in out.glob("date=*/.*.tmp"):
        path.unlink()


def _write_run(out: Path, run: int, events: list[Event]) -> list[Path]:
    by_date: dict[str, list[int]] = {}
    for pos, ev in enumerate(events):
        day = dt.datetime.fromtimestamp(ev.ts, dt.UTC).strftime("%Y-%m-%d")
        by_date.setdefault(day, []).append(pos)
    files = []
    for day, positions in sorted(by_date.items()):
        part_dir = out / f"date={day}"
        new_dir = not part_dir.exists()
        part_dir.mkdir(exist_ok=True)
        if new_dir:
            _fsync_dir(out)
        rows = [events[p] for p in positions]
        table = pa.table(
            {
                "event_id": [e.event_id for e in rows],
                "user_id": [e.user_id for e in rows],
                "item_id": [e.item_id for e in rows],
                "type": [e.type for e in rows],
                "ts": [e.ts for e in rows],
                "received_at": [e.received_at for e in rows],
                "run": [run] * len(rows),
                "pos": positions,
            },
            schema=SCHEMA,
        )
        final = part_dir / f"part-r{run:08d}.parquet"
        tmp = part_dir / f".{final.name}.tmp"
        pq.write_table(table, tmp)
        _durable_replace(tmp, final)
        files.append(final)
    return files


def compact(
    url: str, out_dir: str | Path, *, consumer: str = "trainer", max_events: int | None = None
) -> CompactResult:
    """Export the log's new events to Parquet under ``out_dir`` and commit the cursor.

    Args:
      url: store URL.
      out_dir: export directory (created); one consumer per directory.
      consumer: name of the reader; recorded, and mirrored to the store.
      max_events: cap per run (the rest goes to the next run); None = all.

    Raises:
      StoreError: the directory belongs to another consumer or its state is corrupt;
        StoreUnavailable when the store cannot be read (nothing is committed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        state = _load_state(out)
        if state["consumer"] not in (None, consumer):
            raise StoreError(
                f"{out}: exported for consumer {state['consumer']!r}, not {consumer!r}"
            )
        _remove_orphans(out, int(state["run"]))
        with _opened(url) as (runner, store):
            events: list[Event] = []
            cursor = state["cursor"]
            for page, page_cursor in _pages(runner, store, state["cursor"], max_events):
                cursor = page_cursor
                events.extend(page)
            if not events:
                return CompactResult(
                    out, int(state["run"]), 0, int(state["total"]), state["cursor"]
                )
            run = int(state["run"]) + 1
            files = _write_run(out, run, events)
            new_state = {
                "consumer": consumer,
                "cursor": cursor,
                "run": run,
                "total": int(state["total"]) + len(events),
                "files": [*state["files"], *(str(f.relative_to(out)) for f in files)],
            }
            _commit_state(out, new_state)
            with contextlib.suppress(Exception):  # monitoring only; the commit above is what counts
                runner.run(store.note_consumed(consumer, str(cursor)))
        return CompactResult(out, run, len(events), new_state["total"], str(cursor), files)


def _read(out: Path, after_run: int) -> tuple[list[Event], int]:
    state = _load_state(out)
    tables = []
    for rel in state["files"]:
        path = out / rel
        if _run_of(path) > after_run:
            try:
                tables.append(pq.read_table(path, schema=SCHEMA))
            except (OSError, pa.ArrowInvalid) as exc:
                raise StoreError(f"{path}: committed export file unreadable: {exc}") from exc
    if not tables:
        return [], int(state["run"])
    table = pa.concat_tables(tables).sort_by([("run", "ascending"), ("pos", "ascending")])
    cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    events = [
        Event(*row)
        for row in zip(
            cols["event_id"],
            cols["user_id"],
            cols["item_id"],
            cols["type"],
            cols["ts"],
            cols["received_at"],
            strict=True,
        )
    ]
    return events, int(state["run"])


def read_compacted(out_dir: str | Path) -> list[Event]:
    """Every event of every committed run under ``out_dir``, in log order."""
    return _read(Path(out_dir), 0)[0]


def read_new(out_dir: str | Path, after_run: int) -> tuple[list[Event], int]:
    """Events of the committed runs after ``after_run``, and the last committed run.

    A reader that keeps the returned run number (e.g. in its model manifest) and
    passes it next time reads each event exactly once.
    """
    return _read(Path(out_dir), int(after_run))
