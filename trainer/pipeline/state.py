"""What one run leaves for the next: the run lock, ``pipeline_state.json``, the
checkpoint directories, retention of versions and the manifest's ``pipeline`` record."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common import artifacts
from common.files import atomic_write_text
from trainer.pipeline.config import CHECKPOINTS_DIR, LOCK_FILE, STATE_FILE

log = logging.getLogger(__name__)


class PipelineLocked(RuntimeError):
    """Another pipeline run holds the lock."""


@contextlib.contextmanager
def run_lock(art: Path) -> Iterator[None]:
    art.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(art / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise artifacts.ArtifactError(
                f"{art}: cannot open {LOCK_FILE} for writing ({exc.strerror}); "
                "the pipeline needs the artifact directory read-write"
            ) from exc
        raise
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineLocked(
                f"another pipeline run holds {art / LOCK_FILE}; not starting a second one"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_state(art: Path) -> dict[str, Any]:
    """``ART/pipeline_state.json``: the last run that reached the gate (an unreadable file = none)."""
    path = art / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        log.warning("%s is unreadable (%s); treating it as empty", path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def write_state(art: Path, state: dict[str, Any]) -> None:
    atomic_write_text(art / STATE_FILE, json.dumps(state, indent=2, default=str))


def checkpoint_dir(art: Path, key: dict[str, Any]) -> Path:
    """The checkpoint directory of a training run on one snapshot (same key = resumable)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return art / CHECKPOINTS_DIR / digest[:16]


def clear_checkpoints(art: Path, keep: Path | None = None) -> list[str]:
    """Remove the checkpoint dirs of earlier runs except ``keep`` (call under the run lock)."""
    root = art / CHECKPOINTS_DIR
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if keep is None or p.resolve() != keep.resolve():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    if removed:
        log.info("removed stale checkpoints of earlier runs: %s", removed)
    return removed


def apply_retention(art: Path, keep: int, keep_refused: int, protect: set[str]) -> list[str]:
    """Prune versions: refused candidates apart, then the rest; returns the deleted ids.

    Kept whatever the counts: the published version, the previously published one
    (``PREVIOUS``) and ``protect`` (e.g. versions a snapshot warm-starts from).
    """
    kept = {artifacts.latest_version(art), artifacts.previous_version(art), *protect}
    refused: list[str] = []
    others: list[str] = []
    for v in artifacts.list_versions(art):
        try:
            outcome = artifacts.read_manifest(art, v).get("pipeline", {}).get("outcome")
        except (OSError, ValueError, artifacts.ArtifactError):
            outcome = None
        (refused if outcome == "refused" else others).append(v)
    doomed = refused[: max(len(refused) - keep_refused, 0)] + others[: max(len(others) - keep, 0)]
    doomed = [v for v in doomed if v not in kept]
    for v in doomed:
        artifacts.remove_version(art, v)
    artifacts.sweep_leftovers(art)
    if doomed:
        log.info("retention removed %s", doomed)
    return doomed


def annotate(art: Path, version: str, info: dict[str, Any]) -> None:
    """Record pipeline bookkeeping in a version's manifest (before it is published)."""
    manifest = artifacts.read_manifest(art, version)
    manifest["pipeline"] = info
    artifacts.write_manifest(artifacts.version_dir(art, version), manifest)
