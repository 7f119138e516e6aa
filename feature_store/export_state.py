"""The committed state of an event export directory: ``_cursor.json`` and the lock around it.

``_cursor.json`` = ``{"consumer", "store_id", "cursor", "run", "total",
"files": [...], "tombstones": {...}, "purges"}``: the store the cursor
belongs to, the store cursor after the last exported event, the number of
the last committed run, the event count of the committed files, every
committed file (relative paths) and the erasure tombstones already applied.
Readers trust only this file: a part file it does not list is an orphan (left
by a crash before a commit, or replaced by a committed purge).

``.lock`` is an flock: exclusive while a run writes (:mod:`feature_store.archive`
holds the protocol of a run), shared while a reader reads.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from common.files import durable_replace
from feature_store.base import StoreError

__all__ = [
    "LOCK_FILE",
    "STATE_FILE",
    "is_export_dir",
    "load_state",
    "locked",
    "new_tombstones",
    "remove_orphans",
    "write_state",
]

STATE_FILE = "_cursor.json"
LOCK_FILE = ".lock"


def is_export_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a committed export (its ``_cursor.json``)."""
    return (Path(path) / STATE_FILE).is_file()


@contextlib.contextmanager
def locked(out: Path, exclusive: bool) -> Iterator[None]:
    """flock on ``out/.lock``: exclusive for a run, shared for a reader (none on a read-only dir)."""
    try:
        fh = open(out / LOCK_FILE, "a+")  # noqa: SIM115 - held for the block
    except OSError:
        if exclusive:
            raise
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def load_state(out: Path) -> dict[str, Any]:
    """The committed state of ``out`` (that of an empty export when there is none yet).

    Raises:
      StoreError: ``_cursor.json`` does not parse or lacks a key.
    """
    path = out / STATE_FILE
    state: dict[str, Any] = {"consumer": None, "store_id": None, "cursor": None, "run": 0,
                             "total": 0, "files": [], "tombstones": {}, "purges": 0}  # fmt: skip
    if not path.exists():
        return state
    try:
        loaded = json.loads(path.read_text())
        for key in ("cursor", "run", "total", "files"):
            loaded[key]  # noqa: B018 - presence check
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(
            f"{path}: unreadable compaction state ({exc}); restore it or start a new directory"
        ) from exc
    return {**state, **loaded}


def write_state(out: Path, state: Mapping[str, Any]) -> None:
    """Replace ``out``'s committed state with ``state`` (atomic and durable)."""
    tmp = out / f".{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    durable_replace(tmp, out / STATE_FILE)


def remove_orphans(out: Path, state: Mapping[str, Any]) -> None:
    """Delete the part files (and temp files) of ``out`` that ``state`` does not list."""
    live = {out / rel for rel in state["files"]}
    for path in out.glob("date=*/part-r*.parquet"):
        if path not in live:
            path.unlink()
    for path in out.glob("date=*/.*.tmp"):
        path.unlink()


def new_tombstones(state: Mapping[str, Any], tombstones: Mapping[str, float]) -> dict[str, float]:
    """The store's ``tombstones`` (user hash -> erasure time) that ``state`` has not applied."""
    applied = state.get("tombstones") or {}
    return {h: t for h, t in tombstones.items() if applied.get(h, float("-inf")) < t}
