"""The event archive: the store's log as the trainer reads it, and its crash-safe Parquet export.

``iter_events(url)`` yields every event still in the store's durable log, in
log order (the ``events:URL`` data source). Once an exporter has committed,
the store trims what it exported after ``log_retention``: the export is the
archive.

``compact(url, out_dir)`` exports the events appended since the last run to
Parquet, partitioned by event date, and moves a cursor, so each pipeline run
reads only new events, each exactly once. Layout::

    out_dir/
      _cursor.json                      committed state (feature_store.export_state)
      .lock                             flock: exclusive while a run writes, shared while reading
      date=YYYY-MM-DD/part-r00000007.parquet   one file per (run, date), files: export_files
      _item_metadata.json               the store's item metadata of the exported items

Protocol of one run (under the lock):

1. read the committed state; delete every part file it does not list (left
   by a crash between steps 4 and 5, or replaced by a committed purge);
2. check the store is the one the cursor belongs to (its ``store_id``);
3. read the store's tombstones and the log after the committed cursor;
   drop erased events;
4. write run ``r+1``'s files, and for tombstones not applied yet, rewrite
   the files holding those users' rows without them (new names): temp file,
   fsync, ``os.replace``, fsync dir;
5. commit: write ``_cursor.json`` the same way (the commit point);
6. delete the files the purge replaced; tell the store (``note_consumed``),
   which registers the consumer and trims what every consumer exported
   long enough ago; best effort.

A crash before 5 leaves the old state: the re-run deletes the orphan files,
reads the same events again and rewrites run ``r+1``, so nothing is lost or
duplicated. A crash after 5 is a completed run.

Item metadata: every run (also one with nothing new) fetches the store's
metadata of every item the committed files hold and replaces
``_item_metadata.json`` (``{"store_id", "items": {item_id: {...}}}``) before
its commit, so a reader of the export (``events:DIR``, the pipeline, a
frozen snapshot) has the item features without the store: the copy is as of
the last run. A directory exported by an older version has no such file
(:func:`read_item_metadata` returns None) until its next run.

Erasure: ``forget_user`` removes a user from the store's log and records a
tombstone; the next run purges the user's exported events (those received
up to the erasure) from every file, and every read applies the tombstones
too.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common.files import durable_replace
from feature_store import export_files
from feature_store.base import OnlineStore, StoreError, user_hash
from feature_store.events import Event
from feature_store.export_files import SCHEMA
from feature_store.export_state import (
    load_state,
    locked,
    new_tombstones,
    remove_orphans,
    write_state,
)
from feature_store.sync import LoopThread

__all__ = [
    "SCHEMA",
    "CompactResult",
    "StoreIdentityError",
    "apply_tombstones",
    "compact",
    "item_metadata",
    "iter_events",
    "read_compacted",
    "read_item_metadata",
    "rebind",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

METADATA_FILE = "_item_metadata.json"
PAGE = 10_000
METADATA_BATCH = 2000


class StoreIdentityError(StoreError):
    """The export directory's cursor belongs to another store than the URL names."""


@dataclass(frozen=True)
class CompactResult:
    """Outcome of :func:`compact`.

    Attributes:
      out_dir: the export directory.
      run: number of the last committed run (unchanged when nothing was new).
      new_events: events exported by this call.
      total: events in all committed files.
      cursor: the committed store cursor (None before the first export).
      files: files written by this call (new runs and purge rewrites).
      purged: exported events removed by this call's erasure purge.
    """

    out_dir: Path
    run: int
    new_events: int
    total: int
    cursor: str | None
    files: list[Path] = field(default_factory=list)
    purged: int = 0


@contextlib.contextmanager
def _opened(url: str) -> Iterator[tuple[LoopThread, OnlineStore]]:
    from feature_store import open_store

    runner = LoopThread()
    store = open_store(url)
    try:
        runner.run(store.open())
        yield runner, store
    finally:
        with contextlib.suppress(Exception):
            runner.run(store.close())
        runner.stop()


def _pages(
    runner: LoopThread, store: OnlineStore, cursor: str | None, limit: int | None
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


def _fetch_metadata(
    runner: LoopThread, store: OnlineStore, item_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    ids = sorted(set(item_ids))
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), METADATA_BATCH):
        out.update(runner.run(store.get_item_metadata(ids[start : start + METADATA_BATCH])))
    return out


def item_metadata(url: str, item_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The store's metadata of the known items among ``item_ids`` (sync, batched)."""
    with _opened(url) as (runner, store):
        return _fetch_metadata(runner, store, item_ids)


# -- one run's steps -----------------------------------------------------------------------


def _commit_state(out: Path, state: dict[str, Any]) -> None:
    """The commit point of a run (tests replace it to simulate a crash just before it)."""
    write_state(out, state)


def _write_metadata(out: Path, runner: LoopThread, store: OnlineStore, files: list[str]) -> None:
    """Replace the export's copy of the item metadata of the items in ``files`` (atomic)."""
    items = _fetch_metadata(runner, store, export_files.item_ids(out, files))
    tmp = out / f".{METADATA_FILE}.tmp"
    tmp.write_text(json.dumps({"store_id": store.store_id, "items": items}, sort_keys=True))
    durable_replace(tmp, out / METADATA_FILE)


def _check_store(out: Path, state: Mapping[str, Any], store: OnlineStore) -> None:
    known = state.get("store_id")
    if known is None:
        if state["cursor"] is not None:
            log.warning(
                "%s: the cursor names no store id (written by an older version); adopting %s",
                out,
                store.store_id,
            )
        return
    if known != store.store_id:
        raise StoreIdentityError(
            f"{out}: exported from store {known}, but {_describe(store)} is store "
            f"{store.store_id} (a recreated file, another Redis DB or prefix?); its cursor "
            "would skip or repeat events, so nothing was exported. If the store is the right one "
            f"and its log started over, run `twotower archive rebind {out} --store URL` "
            "(keeps the exported events, exports the store's log from its start); otherwise point "
            "at the original store"
        )


def _describe(store: OnlineStore) -> str:
    config = getattr(store, "config", None)
    redacted = getattr(config, "redacted", None)
    return str(redacted()) if callable(redacted) else str(getattr(store, "url", "the store"))


def _erased(events: list[Event], tombstones: Mapping[str, float]) -> list[Event]:
    """``events`` without those of tombstoned users received at or before their erasure."""
    if not tombstones:
        return events
    hashes: dict[str, str] = {}
    kept = []
    for ev in events:
        h = hashes.setdefault(ev.user_id, user_hash(ev.user_id))
        if h in tombstones and ev.received_at <= tombstones[h]:
            continue
        kept.append(ev)
    return kept


# -- the export ----------------------------------------------------------------------------


def compact(
    url: str, out_dir: str | Path, *, consumer: str = "trainer", max_events: int | None = None
) -> CompactResult:
    """Export the log's new events to Parquet under ``out_dir``, purge erased users, commit.

    Args:
      url: store URL.
      out_dir: export directory (created); one consumer and one store per directory.
      consumer: name of the reader; recorded, and registered with the store (retention).
      max_events: cap per run (the rest goes to the next run); None = all.

    Raises:
      StoreIdentityError: the directory's cursor belongs to another store.
      StoreError: the directory belongs to another consumer, its state is corrupt or an
        event cannot be exported; StoreUnavailable when the store cannot be read
        (nothing is committed in every case).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with locked(out, exclusive=True):
        state = load_state(out)
        if state["consumer"] not in (None, consumer):
            raise StoreError(
                f"{out}: exported for consumer {state['consumer']!r}, not {consumer!r}"
            )
        remove_orphans(out, state)
        with _opened(url) as (runner, store):
            _check_store(out, state, store)
            tombstones = runner.run(store.forgotten_users())
            events: list[Event] = []
            cursor = state["cursor"]
            for page, page_cursor in _pages(runner, store, state["cursor"], max_events):
                cursor = page_cursor
                events.extend(page)
            events = _erased(events, tombstones)
            fresh = new_tombstones(state, tombstones)
            if cursor == state["cursor"] and not fresh and state.get("store_id") == store.store_id:
                _write_metadata(out, runner, store, list(state["files"]))
                return CompactResult(
                    out, int(state["run"]), 0, int(state["total"]), state["cursor"]
                )
            files, replaced, purged = list(state["files"]), list[Path](), 0
            if fresh:
                purges = int(state["purges"]) + 1
                files, replaced, purged = export_files.purge(out, files, fresh, purges)
                state["purges"] = purges
            run = int(state["run"]) + (1 if events else 0)
            written = export_files.write_run(out, run, events) if events else []
            new_state = {
                **state,
                "consumer": consumer,
                "store_id": store.store_id,
                "cursor": cursor,
                "run": run,
                "total": int(state["total"]) - purged + len(events),
                "files": [*files, *(str(f.relative_to(out)) for f in written)],
                "tombstones": {**(state.get("tombstones") or {}), **fresh},
            }
            # Before the commit: a crash in between leaves a copy that covers more items.
            _write_metadata(out, runner, store, list(new_state["files"]))
            _commit_state(out, new_state)
            for path in replaced:
                path.unlink(missing_ok=True)
            if cursor is not None and cursor != state["cursor"]:
                with contextlib.suppress(Exception):  # retention only; the commit is what counts
                    runner.run(store.note_consumed(consumer, str(cursor)))
        rewritten = [out / f for f in files if out / f not in {out / r for r in state["files"]}]
        return CompactResult(
            out, run, len(events), new_state["total"], cursor, [*rewritten, *written], purged
        )


def apply_tombstones(url: str, out_dir: str | Path) -> int:
    """Purge the store's erased users from an export directory now; returns rows removed.

    :func:`compact` does this on every run; call this right after an erasure when
    the next scheduled run is too far away.
    """
    out = Path(out_dir)
    with locked(out, exclusive=True):
        state = load_state(out)
        remove_orphans(out, state)
        with _opened(url) as (runner, store):
            _check_store(out, state, store)
            fresh = new_tombstones(state, runner.run(store.forgotten_users()))
        if not fresh:
            return 0
        purges = int(state["purges"]) + 1
        files, replaced, purged = export_files.purge(out, list(state["files"]), fresh, purges)
        new_state = {
            **state,
            "files": files,
            "purges": purges,
            "total": int(state["total"]) - purged,
            "tombstones": {**(state.get("tombstones") or {}), **fresh},
        }
        _commit_state(out, new_state)
        for path in replaced:
            path.unlink(missing_ok=True)
        return purged


def rebind(out_dir: str | Path, url: str) -> None:
    """Tie an export directory to the store at ``url``, exporting its log from the start.

    For a store whose log started over (recreated file, restored Redis): the
    exported events stay; the next run exports every event of the new store.
    From the command line: ``twotower archive rebind DIR --store URL``.
    """
    out = Path(out_dir)
    with locked(out, exclusive=True):
        state = load_state(out)
        with _opened(url) as (_runner, store):
            _commit_state(out, {**state, "store_id": store.store_id, "cursor": None})


def read_compacted(out_dir: str | Path, *, url: str | None = None) -> list[Event]:
    """Every event of every committed run under ``out_dir``, in log order.

    Erased users' events are left out: those of the directory's tombstones and,
    with ``url``, of the store's current ones (an erasure since the last run).
    """
    out = Path(out_dir)
    with locked(out, exclusive=False):
        state = load_state(out)
        tombstones = dict(state.get("tombstones") or {})
        if url is not None:
            with _opened(url) as (runner, store):
                for h, t in runner.run(store.forgotten_users()).items():
                    tombstones[h] = max(t, tombstones.get(h, t))
        return export_files.read_events(out, list(state["files"]), 0, tombstones)


def read_item_metadata(out_dir: str | Path) -> dict[str, dict[str, Any]] | None:
    """The export's copy of the store's item metadata (``{item_id: {...}}``, as of its last run).

    None when the directory has no copy (exported by a version before it was kept).
    """
    out = Path(out_dir)
    with locked(out, exclusive=False):
        path = out / METADATA_FILE
        try:
            loaded = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise StoreError(f"{path}: unreadable item metadata ({exc})") from exc
    items = loaded.get("items") if isinstance(loaded, dict) else None
    if not isinstance(items, dict):
        raise StoreError(f'{path}: no "items" object; not an item metadata copy')
    return items
