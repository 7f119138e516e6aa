"""Durable file writes: a reader sees the old file or the whole new one, never a torn one.

One rule for every file the programs publish (``LATEST``, manifests, FAISS
indexes, Parquet parts, reports): write a temporary file beside the target,
fsync it, ``os.replace`` it over the target, fsync the directory so the rename
itself survives a power cut.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync one file or directory by path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsync every file and directory under ``root`` (files first, then dirs bottom-up)."""
    for dirpath, _dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            fsync_path(Path(dirpath) / name)
        fsync_path(dirpath)


def durable_replace(tmp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """fsync the written ``tmp``, rename it over ``final``, fsync ``final``'s directory."""
    fsync_path(tmp)
    os.replace(tmp, final)
    fsync_path(Path(final).parent)


def temp_path(path: str | os.PathLike[str]) -> Path:
    """A hidden, unique temporary name beside ``path`` (same directory, so same file system)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write; on a clean exit it durably replaces ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    tmp = temp_path(path)
    try:
        yield tmp
        durable_replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8) atomically and durably."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
