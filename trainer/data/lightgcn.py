"""LightGCN-style split files: ``DIR/train.txt``, ``valid.txt``, ``test.txt``.

Each line is ``user item item ...`` (whitespace-separated non-negative
integers; a user line may list no items). Every listed pair is a positive of
the file's split (``train`` -> TRAIN, ``valid`` -> VALID, ``test`` -> TEST);
there are no dislikes and no time: ``ts`` is NaN and ``timestamped`` is False
(item lists are sorted by id, so their order means nothing). ``valid.txt`` is
optional (the original LightGCN releases have only train/test); ``train.txt``
and ``test.txt`` are required.

Users and items are numbered in increasing id order, so for the usual
0..n-1 ids an index equals its id. A user listed with no item in any file has
no event and is not in the data set. A malformed line (a token that is not
an id: anything but ASCII digits, e.g. ``-1``, ``1.5`` or ``²``, or a number
above int64's range; see :mod:`trainer.data.ids`) raises a DataError naming
file, line and token, or with ``skip_bad_lines`` is skipped and counted in
``Dataset.skipped_lines``. Blank lines are ignored. A ``train.txt`` or
``test.txt`` without any (user, item) pair (empty, truncated, only item-less
user lines) is a DataError naming the file.
"""

from __future__ import annotations

import logging
import os
from itertools import chain
from pathlib import Path

import numpy as np

from trainer.data.dataset import POSITIVE, TEST, TRAIN, VALID, Dataset
from trainer.data.errors import BadLines, DataError
from trainer.data.ids import id_problem, plain_ids
from trainer.data.split import assemble

log = logging.getLogger(__name__)

FILES = (("train.txt", TRAIN, True), ("valid.txt", VALID, False), ("test.txt", TEST, True))


def _parse_fast(lines: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(users [E], items [E]) when every line is clean; None to take the careful path."""
    if not all(line.isascii() for line in lines):
        return None
    parts = [line.split() for line in lines]
    counts = np.fromiter((len(p) for p in parts), dtype=np.int64, count=len(parts))
    tokens = np.array(list(chain.from_iterable(parts)))
    if not len(tokens):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if not plain_ids(tokens):
        return None
    values = tokens.astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    line_users = values[starts]
    is_item = np.ones(len(values), dtype=bool)
    is_item[starts] = False
    users = np.repeat(line_users, counts - 1)
    return users, values[is_item]


def _parse_slow(numbered: list[tuple[int, str]], bad: BadLines) -> tuple[np.ndarray, np.ndarray]:
    users: list[int] = []
    items: list[int] = []
    for no, line in numbered:
        fields = line.split()
        why = next((w for w in map(id_problem, fields) if w is not None), None)
        if why is not None:
            bad.bad(no, f"{why} (expected 'user item item ...')")
            continue
        values = [int(f) for f in fields]
        users.extend([values[0]] * (len(values) - 1))
        items.extend(values[1:])
    return np.array(users, dtype=np.int64), np.array(items, dtype=np.int64)


def read_split_file(path: Path, bad: BadLines) -> tuple[np.ndarray, np.ndarray]:
    """(users [E], items [E]) int64 of one file, one entry per listed (user, item) pair."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")  # a leading BOM is not data
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    parsed = _parse_fast([line for _, line in numbered])
    return parsed if parsed is not None else _parse_slow(numbered, bad)


def check_directory(directory: str | os.PathLike) -> Path:
    """The split directory if it holds the required files (nothing is read); raises DataError."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DataError(
            "not a directory (lightgcn:DIR wants train.txt, valid.txt, test.txt)", path=str(root)
        )
    for name, _split, required in FILES:
        if required and not (root / name).is_file():
            raise DataError(
                f"missing {name} (lightgcn:DIR wants train.txt, valid.txt, test.txt)",
                path=str(root),
            )
    return root


def read_lightgcn(
    directory: str | os.PathLike, *, skip_bad_lines: bool = False, source: str | None = None
) -> Dataset:
    """Read a LightGCN split directory into an untimed Dataset with the given split.

    Args:
      directory: holds ``train.txt`` and ``test.txt`` (and usually ``valid.txt``).
      skip_bad_lines: skip and count malformed lines instead of raising.
      source: the SRC string to record (default ``lightgcn:<directory>``).
    """
    root = check_directory(directory)
    users, items, splits = [], [], []
    skipped = 0
    for name, split, required in FILES:
        path = root / name
        if not path.is_file():  # only valid.txt is optional (check_directory)
            log.warning("%s: no %s; the data set has no validation split", root, name)
            continue
        bad = BadLines(str(path), skip_bad_lines)
        u, i = read_split_file(path, bad)
        skipped += bad.report()
        if not len(u) and required:
            # Empty, truncated to nothing, or only item-less user lines: training on no
            # train pair, or scoring on no test pair, would be a silently meaningless model.
            raise DataError(
                f"no (user, item) pair in {name}: empty or truncated? ('user item item ...' "
                "per line)",
                path=str(path),
            )
        users.append(u)
        items.append(i)
        splits.append(np.full(len(u), split, dtype=np.int8))
    user_arr = np.concatenate(users)
    ds = assemble(
        source=source or f"lightgcn:{directory}",
        kind="lightgcn",
        user_raw=user_arr,
        item_raw=np.concatenate(items),
        labels=np.full(len(user_arr), POSITIVE, dtype=np.int8),
        ts=None,
        split=np.concatenate(splits),
        skipped_lines=skipped,
        numeric_ids=True,
    )
    log.info(
        "%s: %d users, %d items, %d interactions", root, ds.num_users, ds.num_items, len(ds.users)
    )
    return ds
