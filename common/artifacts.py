"""The artifact directory: versioned, atomically published model exports.

This is the only thing ``trainer`` and ``serving`` share. Layout::

    ART/
      LATEST                    # published version id, replaced atomically
      versions/<version>/
        manifest.json
        user_tower/             # SavedModel, signature ``serving_default``:
                                #   history  int32 [batch, H]  (item indices, right-aligned,
                                #            most recent last, 0 = padding)
                                #   dislikes int32 [batch, D]  (same convention)
                                #   -> embedding float32 [batch, dim]
        items.npz               # ids: str [N] in index order; embeddings: float32 [N, dim]
        index.faiss             # CPU-serialized FAISS index over the embeddings
        checkpoint/             # tf.train.Checkpoint for warm starts (optional)
      PREVIOUS                  # the version LATEST named before the last publish (rollback)
      .publish.lock             # flock held while LATEST is compared and replaced

Item index ``i`` (0-based row of ``items.npz`` and FAISS id) is fed to the
tower as ``i + 1``; 0 is padding. A version directory is written under
``versions/.staging-*``, fsynced and renamed before ``LATEST`` names it, so a
reader never sees a half-written version. ``publish(..., expected=V)`` is a
compare-and-swap: it replaces ``LATEST`` only while it still names ``V``, so a
job that gated its candidate against ``V`` never publishes over a version
someone else published meanwhile. Deleting a version renames it to
``versions/.trash-*`` first (one atomic step), so a deletion killed midway never
leaves a directory that still looks like a complete version.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from common.files import atomic_write_text, fsync_path, fsync_tree

LATEST = "LATEST"
PREVIOUS = "PREVIOUS"
PUBLISH_LOCK = ".publish.lock"
VERSIONS = "versions"
MANIFEST = "manifest.json"
ITEMS = "items.npz"
INDEX = "index.faiss"
USER_TOWER = "user_tower"
CHECKPOINT = "checkpoint"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
#: A version id is one plain directory name: not hidden (staging/trash dirs start with
#: "."), no path separator, no "..", no whitespace or control characters.
VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,199}")


class ArtifactError(RuntimeError):
    """An artifact directory or version is missing or incomplete."""


class PublishConflict(ArtifactError):
    """``LATEST`` no longer names the version a compare-and-swap publish expected."""

    def __init__(self, art: Path, version: str, expected: str | None, found: str | None):
        self.expected, self.found = expected, found
        super().__init__(
            f"{art}: not publishing {version}: LATEST names {found or 'nothing'}, "
            f"expected {expected or 'nothing'} (another job published meanwhile); "
            "evaluate the candidate against the new version before publishing it"
        )


class _AnyVersion:
    """Sentinel of :func:`publish`: replace LATEST whatever it names."""

    def __repr__(self) -> str:
        return "ANY"


ANY = _AnyVersion()


def new_version_id(now: float | None = None) -> str:
    """A sortable, unique version id such as ``20261122T051500.123456Z-3f2a``."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    return f"{stamp}.{int(now % 1 * 1e6):06d}Z-{secrets.token_hex(2)}"


def versions_dir(art: str | os.PathLike[str]) -> Path:
    return Path(art) / VERSIONS


def version_dir(art: str | os.PathLike[str], version: str) -> Path:
    return versions_dir(art) / version


@contextlib.contextmanager
def staging_version(
    art: str | os.PathLike[str], version: str | None = None
) -> Iterator[tuple[str, Path]]:
    """Yield ``(version, staging_dir)``; on clean exit fsync and rename into ``versions/``.

    On an exception the staging directory is removed and nothing is published.
    """
    version = version or new_version_id()
    root = versions_dir(art)
    root.mkdir(parents=True, exist_ok=True)
    staging = root / f"{STAGING_PREFIX}{version}"
    staging.mkdir()
    try:
        yield version, staging
        fsync_tree(staging)
        final = root / version
        if final.exists():
            raise ArtifactError(f"version {version} already exists in {root}")
        os.rename(staging, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@contextlib.contextmanager
def _publish_lock(art: Path) -> Iterator[None]:
    """Serialise publishers of one artifact directory (``flock``; released if the process dies)."""
    fd = os.open(art / PUBLISH_LOCK, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def publish(
    art: str | os.PathLike[str], version: str, *, expected: str | None | _AnyVersion = ANY
) -> None:
    """Point ``LATEST`` at ``version`` atomically. The version must be complete.

    Args:
      art: the artifact directory.
      version: a complete version under ``art/versions``.
      expected: compare-and-swap. When given, ``LATEST`` is replaced only if it still
        names ``expected`` (None = nothing published yet); otherwise
        :class:`PublishConflict` is raised and ``LATEST`` is left alone. The default
        (``ANY``) publishes unconditionally.

    The version ``LATEST`` named before is recorded in ``PREVIOUS`` (the rollback
    target, which retention never deletes).
    """
    art = Path(art)
    vdir = version_dir(art, version)
    if not (vdir / MANIFEST).is_file():
        raise ArtifactError(f"cannot publish {version}: {vdir / MANIFEST} is missing")
    with _publish_lock(art):
        current = latest_version(art)
        if not isinstance(expected, _AnyVersion) and current != expected:
            raise PublishConflict(art, version, expected, current)
        if current is not None and current != version:
            atomic_write_text(art / PREVIOUS, current + "\n")
        atomic_write_text(art / LATEST, version + "\n")


def latest_version(art: str | os.PathLike[str]) -> str | None:
    """The published version id, or None when nothing is published yet."""
    try:
        text = (Path(art) / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def previous_version(art: str | os.PathLike[str]) -> str | None:
    """The version ``LATEST`` named before the last publish (None if there was none)."""
    try:
        text = (Path(art) / PREVIOUS).read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def list_versions(art: str | os.PathLike[str]) -> list[str]:
    """Complete versions (with a manifest), oldest first; staging and trash dirs never count."""
    root = versions_dir(art)
    if not root.is_dir():
        return []
    return sorted(
        p.name
        for p in root.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file()
    )


def resolve_version(art: str | os.PathLike[str], version: str | None = None) -> str:
    """``version`` if given and present, else the published one; raises ArtifactError."""
    if version is None:
        version = latest_version(art)
        if version is None:
            raise ArtifactError(
                f"{art}: nothing published yet (no {LATEST} file); run `twotower train` first"
            )
    if not (version_dir(art, version) / MANIFEST).is_file():
        raise ArtifactError(
            f"{art}: version {version!r} not found (have: {', '.join(list_versions(art)) or 'none'})"
        )
    return version


def check_version_id(version: str) -> str:
    """``version`` if it is a plain version directory name, else ArtifactError (never a path)."""
    if not VERSION_ID.fullmatch(version):
        shown = version if len(version) <= 80 else version[:80] + "..."
        raise ArtifactError(
            f"version id {shown!r} is not a plain directory name (letters, digits, '.', '_', "
            "'+', '-'; no path separators, no leading '.')"
        )
    return version


def contained_version_dir(art: str | os.PathLike[str], version: str) -> Path:
    """The real path of ``version``'s directory, refused unless it stays under ``art``.

    The id must be a plain name (:func:`check_version_id`), and neither the
    directory nor any symlink inside it may resolve outside the artifact root
    (``realpath(art)``): a LATEST naming ``../x`` or ``/etc``, or a version or a
    file in it that is a symlink to elsewhere, is an ArtifactError naming it.
    """
    check_version_id(version)
    root = Path(art).resolve()
    vdir = version_dir(art, version)
    try:
        real = vdir.resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise ArtifactError(f"{vdir}: no such version directory ({exc})") from None
    if not real.is_relative_to(root):
        raise ArtifactError(f"{vdir} resolves to {real}, outside the artifact root {root}")
    for dirpath, dirnames, filenames in os.walk(real):
        for name in (*dirnames, *filenames):
            entry = Path(dirpath) / name
            if entry.is_symlink():
                target = entry.resolve()
                if not target.is_relative_to(root):
                    raise ArtifactError(
                        f"{entry} is a symlink to {target}, outside the artifact root {root}"
                    )
    return real


def read_manifest(art: str | os.PathLike[str], version: str | None = None) -> dict[str, Any]:
    """Load ``manifest.json`` of a version (the published one by default)."""
    version = resolve_version(art, version)
    with open(version_dir(art, version) / MANIFEST) as fh:
        data: dict[str, Any] = json.load(fh)
    return data


def write_manifest(vdir: Path, manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` of the version in ``vdir`` atomically (the only manifest writer)."""
    text = json.dumps(dict(manifest), indent=2, sort_keys=True, default=_json_default)
    atomic_write_text(vdir / MANIFEST, text)


def _json_default(obj: Any) -> Any:
    # numpy scalars/arrays sneak into metrics; keep the manifest plain JSON.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def remove_version(art: str | os.PathLike[str], version: str) -> None:
    """Delete one version: rename it to ``versions/.trash-*`` (atomic), then remove that.

    A deletion killed midway leaves only a ``.trash-*`` directory, which no reader
    takes for a version and :func:`sweep_leftovers` removes. The published version
    is refused.
    """
    if version == latest_version(art):
        raise ArtifactError(f"{art}: refusing to delete {version}: LATEST names it")
    root = versions_dir(art)
    trash = root / f"{TRASH_PREFIX}{version}-{secrets.token_hex(2)}"
    try:
        os.rename(root / version, trash)
    except FileNotFoundError:
        return
    fsync_path(root)
    shutil.rmtree(trash, ignore_errors=True)


def sweep_leftovers(art: str | os.PathLike[str], stale_after_s: float = 6 * 3600) -> list[str]:
    """Remove trash of interrupted deletions and staging dirs older than ``stale_after_s``.

    Staging leftovers of killed exports are garbage; a young one may belong to a
    live export, so only stale ones go. Returns the names removed.
    """
    root = versions_dir(art)
    removed: list[str] = []
    if not root.is_dir():
        return removed
    now = time.time()
    for p in root.iterdir():
        if p.name.startswith(TRASH_PREFIX) or (
            p.name.startswith(STAGING_PREFIX) and now - p.stat().st_mtime > stale_after_s
        ):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p.name)
    return removed


def prune_versions(
    art: str | os.PathLike[str],
    keep: int,
    stale_after_s: float = 6 * 3600,
    protect: Iterable[str] = (),
) -> list[str]:
    """Delete all but the newest ``keep`` versions; return the deleted ids.

    Never deleted: the published version, the previously published one
    (``PREVIOUS``) and the ids in ``protect``.
    """
    if keep < 1:
        raise ValueError("keep must be >= 1")
    kept = {latest_version(art), previous_version(art), *protect}
    versions = list_versions(art)
    doomed = [v for v in versions[:-keep] if v not in kept]
    for v in doomed:
        remove_version(art, v)
    sweep_leftovers(art, stale_after_s)
    return doomed
