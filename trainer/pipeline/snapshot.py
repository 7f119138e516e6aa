"""Frozen training snapshots: the event archive up to one committed run, in one file.

Multi-worker training needs every replica to train on *identical* data: the
chief and the workers each build their dataset, and different vocabularies or
row counts hang the collectives or fail on shapes. Reading the live event log
(or an archive that later runs extend and erasure rewrites) from several pods
at slightly different moments cannot promise that. ``twotower pipeline
--freeze`` therefore archives the new events, then writes what the next
training run would read into an immutable snapshot::

    ART/snapshots/<id>/
      events.parquet     event_id, user_id, item_id, type, ts, received_at (log order)
      items.json         the archive's copy of the store's item metadata (item features)
      snapshot.json      id, archive_run, archived_events, events, sha256 of
                         events.parquet, items_sha256 of items.json, warm_version
                         (LATEST at freeze time), created_at

and every replica of the job reads it with ``--snapshot ART/snapshots/<id>``.
The directory is written under a staging name and renamed; readers verify the
checksum, so a damaged or edited snapshot fails the same way on every replica
(exit 2) instead of diverging. All replicas warm-start from the recorded
``warm_version``, not from whatever ``LATEST`` names when each pod starts.
The item metadata is frozen with the events for the same reason: every
replica builds the same item feature tables. A snapshot written before item
metadata was frozen (no ``items_sha256``) trains without item features.

Erasure: a snapshot is a copy. ``--freeze`` keeps only the newest
``pipeline.keep_snapshots`` of them; after forgetting a user, delete the
snapshots (``rm -r ART/snapshots``) or freeze a new one before training.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from common import artifacts
from common.files import fsync_tree
from feature_store.events import Event
from feature_store.export_files import SCHEMA as EXPORT_SCHEMA

SNAPSHOTS_DIR = "snapshots"
EVENTS_FILE = "events.parquet"
ITEMS_FILE = "items.json"
META_FILE = "snapshot.json"
#: The log export's event columns, without its bookkeeping (run, position in the run).
SCHEMA = pa.schema([f for f in EXPORT_SCHEMA if f.name not in ("run", "pos")])


class SnapshotError(artifacts.ArtifactError):
    """A snapshot is missing, incomplete or does not match its checksum (exit 2)."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_snapshot(
    art: Path,
    events: list[Event],
    *,
    archive_run: int,
    archived_events: int,
    warm_version: str | None,
    item_metadata: Mapping[str, Mapping[str, Any]] | None = None,
) -> Path:
    """Freeze ``events`` (log order) and ``item_metadata`` into ``ART/snapshots/<id>``.

    ``item_metadata`` None (no copy of the store's metadata) is recorded as such:
    the snapshot then trains without item features. Returns the directory.
    """
    root = Path(art) / SNAPSHOTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    snap_id = f"r{archive_run:08d}-{artifacts.new_version_id()}"
    staging = root / f".staging-{snap_id}"
    staging.mkdir()
    try:
        table = pa.table(
            {name: [getattr(e, name) for e in events] for name in SCHEMA.names}, schema=SCHEMA
        )
        pq.write_table(table, staging / EVENTS_FILE)
        meta = {
            "id": snap_id,
            "archive_run": int(archive_run),
            "archived_events": int(archived_events),
            "events": len(events),
            "sha256": _sha256(staging / EVENTS_FILE),
            "items_sha256": None,
            "warm_version": warm_version,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        if item_metadata is not None:
            (staging / ITEMS_FILE).write_text(json.dumps(item_metadata, sort_keys=True))
            meta["items_sha256"] = _sha256(staging / ITEMS_FILE)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2))
        fsync_tree(staging)
        final = root / snap_id
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def read_meta(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``snapshot.json`` of the snapshot at ``path``; raises SnapshotError if it is not one."""
    meta_path = Path(path) / META_FILE
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text())
        for key in ("id", "archive_run", "archived_events", "events", "sha256"):
            meta[key]  # noqa: B018 - presence check
    except FileNotFoundError:
        raise SnapshotError(
            f"--snapshot {path}: no {META_FILE}; pass a directory written by "
            "`twotower pipeline --freeze` (ART/snapshots/<id>)"
        ) from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SnapshotError(f"{meta_path}: not a snapshot description ({exc})") from exc
    return meta


def load_snapshot(path: str | os.PathLike[str]) -> tuple[list[Event], dict[str, Any]]:
    """The snapshot's events (log order) and its description, after checking the checksum."""
    meta = read_meta(path)
    events_path = Path(path) / EVENTS_FILE
    if not events_path.is_file():
        raise SnapshotError(f"--snapshot {path}: {EVENTS_FILE} is missing")
    digest = _sha256(events_path)
    if digest != meta["sha256"]:
        raise SnapshotError(
            f"{events_path}: checksum {digest[:12]} does not match {META_FILE} "
            f"({str(meta['sha256'])[:12]}); the snapshot was modified: freeze a new one"
        )
    table = pq.read_table(events_path, schema=SCHEMA)
    cols = [table.column(name).to_pylist() for name in SCHEMA.names]
    events = [Event(*row) for row in zip(*cols, strict=True)]
    if len(events) != meta["events"]:
        raise SnapshotError(
            f"{events_path}: {len(events)} events, {META_FILE} says {meta['events']}"
        )
    return events, meta


def load_item_metadata(
    path: str | os.PathLike[str], meta: Mapping[str, Any]
) -> dict[str, dict[str, Any]] | None:
    """The snapshot's frozen item metadata (checksum checked); None if it froze none."""
    expected = meta.get("items_sha256")
    if not expected:
        return None
    items_path = Path(path) / ITEMS_FILE
    if not items_path.is_file():
        raise SnapshotError(f"--snapshot {path}: {ITEMS_FILE} is missing")
    digest = _sha256(items_path)
    if digest != expected:
        raise SnapshotError(
            f"{items_path}: checksum {digest[:12]} does not match {META_FILE} "
            f"({str(expected)[:12]}); the snapshot was modified: freeze a new one"
        )
    try:
        items = json.loads(items_path.read_text())
    except ValueError as exc:
        raise SnapshotError(f"{items_path}: not JSON ({exc})") from exc
    if not isinstance(items, dict):
        raise SnapshotError(f"{items_path}: not an object of item metadata")
    return items


def list_snapshots(art: Path) -> list[Path]:
    """Complete snapshots under ``ART/snapshots``, oldest first."""
    root = Path(art) / SNAPSHOTS_DIR
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if not p.name.startswith(".") and (p / META_FILE).is_file()
    )


def prune_snapshots(art: Path, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` snapshots (and staging leftovers); returns the ids removed."""
    snaps = list_snapshots(art)
    doomed = snaps[:-keep] if keep > 0 else snaps
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    root = Path(art) / SNAPSHOTS_DIR
    if root.is_dir():
        for p in root.glob(".staging-*"):
            shutil.rmtree(p, ignore_errors=True)
    return [p.name for p in doomed]


def pinned_versions(art: Path) -> set[str]:
    """Versions that snapshots will warm-start from (retention keeps them)."""
    out = set()
    for p in list_snapshots(art):
        try:
            version = read_meta(p).get("warm_version")
        except SnapshotError:
            continue
        if version:
            out.add(str(version))
    return out
