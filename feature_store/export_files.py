"""The Parquet files of a log export: writing a run, purging erased users, reading back.

File names: ``date=YYYY-MM-DD/part-r<run>.parquet`` as a run writes them,
``part-r<run>-p<purge>.parquet`` once a purge rewrote them. Every row keeps
its ``run`` and ``pos`` (position in the run), so rewritten files read back
in log order. Writes are atomic (temp file, fsync, ``os.replace``, fsync of
the directory); which files are live is decided only by the export's state
file (:mod:`feature_store.export_state`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from common.files import durable_replace, fsync_path
from feature_store.base import StoreError, user_hash
from feature_store.events import EVENT_TYPES, Event

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


def run_of(path: Path) -> int:
    """The run number in a part file's name (``part-r00000007[-p00000002].parquet`` -> 7)."""
    return int(path.stem.split("-r", 1)[1].split("-", 1)[0])


def _day(ev: Event) -> str:
    try:
        return dt.datetime.fromtimestamp(ev.ts, dt.UTC).strftime("%Y-%m-%d")
    except (OverflowError, OSError, ValueError) as exc:
        raise StoreError(
            f"log event {ev.event_id!r} of user {ev.user_id!r} (received_at {ev.received_at}) "
            f"has ts={ev.ts!r}, which is not a date ({exc}); nothing was exported. Remove it "
            "from the store's log (forget_user, or XDEL / DELETE FROM log for that one entry) "
            "and run the export again"
        ) from exc


def _write_table(table: pa.Table, final: Path) -> None:
    tmp = final.parent / f".{final.name}.tmp"
    pq.write_table(table, tmp)
    durable_replace(tmp, final)


def write_run(out: Path, run: int, events: list[Event]) -> list[Path]:
    """Write run ``run``'s events, one file per event date; returns the files."""
    by_date: dict[str, list[int]] = {}
    for pos, ev in enumerate(events):
        by_date.setdefault(_day(ev), []).append(pos)
    files = []
    for day, positions in sorted(by_date.items()):
        part_dir = out / f"date={day}"
        new_dir = not part_dir.exists()
        part_dir.mkdir(exist_ok=True)
        if new_dir:
            fsync_path(out)
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
        _write_table(table, final)
        files.append(final)
    return files


def erased_mask(table: pa.Table, tombstones: Mapping[str, float]) -> pa.Array:
    """bool [rows]: rows of a tombstoned user received at or before its erasure."""
    if not tombstones or table.num_rows == 0:
        return pa.array([False] * table.num_rows)
    users = pc.unique(table.column("user_id")).to_pylist()
    limits = {u: tombstones[h] for u in users if (h := user_hash(u)) in tombstones}
    if not limits:
        return pa.array([False] * table.num_rows)
    limit = [limits.get(u, float("-inf")) for u in table.column("user_id").to_pylist()]
    return pc.less_equal(table.column("received_at"), pa.array(limit, pa.float64()))


def read_file(path: Path) -> pa.Table:
    """A committed export file, checked row by row (see :func:`check_table`)."""
    try:
        columns = pq.read_schema(path).names
        table = pq.read_table(path, schema=SCHEMA)
    except (OSError, pa.ArrowInvalid) as exc:
        raise StoreError(f"{path}: committed export file unreadable: {exc}") from exc
    check_table(table, path, columns)
    return table


def _first(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.index(mask, True).as_py())


def check_table(table: pa.Table, path: Path, columns: list[str]) -> None:
    """Refuse a file no export run writes: a missing column (read back as nulls), a null,
    an empty id, an unknown type, a ts or received_at that is not a finite positive number.

    Args:
      columns: the column names the file itself has (``pq.read_schema``): reading with
        ``SCHEMA`` fills a missing one with nulls.
    Raises StoreError naming ``path``, the row (0-based) and the column: such a file was
    damaged or replaced, and training on it would silently learn from wrong events.
    """
    for name in SCHEMA.names:
        if name not in columns:
            raise StoreError(f"{path}: column {name!r} is missing; not an export file of this log")
        column = table.column(name)
        if column.null_count:
            raise StoreError(f"{path}: row {_first(column.is_null())}: {name} is null")
    for name in ("event_id", "user_id", "item_id"):
        empty = pc.equal(pc.utf8_length(table.column(name)), 0)
        if pc.any(empty).as_py():
            raise StoreError(f"{path}: row {_first(empty)}: {name} is empty")
    unknown = pc.invert(pc.is_in(table.column("type"), value_set=pa.array(sorted(EVENT_TYPES))))
    if pc.any(unknown).as_py():
        row = _first(unknown)
        raise StoreError(
            f"{path}: row {row}: unknown event type {table.column('type')[row].as_py()!r}"
        )
    for name in ("ts", "received_at"):
        column = table.column(name)
        bad = pc.or_(pc.invert(pc.is_finite(column)), pc.less_equal(column, 0.0))
        if pc.any(bad).as_py():
            row = _first(bad)
            raise StoreError(
                f"{path}: row {row}: {name}={column[row].as_py()!r} is not a finite number "
                "of seconds since the epoch"
            )


def purge(
    out: Path, files: list[str], tombstones: Mapping[str, float], generation: int
) -> tuple[list[str], list[Path], int]:
    """Rewrite the files holding erased rows, without them.

    Returns ``(files after the purge, files replaced, rows removed)``; the replaced
    files are still on disk (delete them once the new list is committed).
    """
    kept: list[str] = []
    replaced: list[Path] = []
    removed = 0
    for rel in files:
        path = out / rel
        table = read_file(path)
        mask = erased_mask(table, tombstones)
        drop = int(pc.sum(mask).as_py() or 0)
        if drop == 0:
            kept.append(rel)
            continue
        removed += drop
        replaced.append(path)
        rest = table.filter(pc.invert(mask))
        if rest.num_rows == 0:
            continue
        final = path.parent / f"part-r{run_of(path):08d}-p{generation:08d}.parquet"
        _write_table(rest, final)
        kept.append(str(final.relative_to(out)))
    return kept, replaced, removed


def item_ids(out: Path, files: list[str]) -> set[str]:
    """The distinct item ids of the listed files (reads only that column)."""
    ids: set[str] = set()
    for rel in files:
        try:
            column = pq.read_table(out / rel, columns=["item_id"]).column("item_id")
        except (OSError, pa.ArrowInvalid) as exc:
            raise StoreError(f"{out / rel}: committed export file unreadable: {exc}") from exc
        ids.update(pc.unique(column).to_pylist())
    return ids


def read_events(
    out: Path, files: list[str], after_run: int, tombstones: Mapping[str, float]
) -> list[Event]:
    """Events of the listed files with run > ``after_run``, in log order, erased rows left out."""
    tables = [read_file(out / rel) for rel in files if run_of(out / rel) > after_run]
    if not tables:
        return []
    table = pa.concat_tables(tables).sort_by([("run", "ascending"), ("pos", "ascending")])
    if tombstones:
        table = table.filter(pc.invert(erased_mask(table, tombstones)))
    cols = {name: table.column(name).to_pylist() for name in SCHEMA.names}
    return [
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
