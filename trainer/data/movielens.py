"""MovieLens ratings: ``u.data`` (ml-100k) and ``ratings.csv`` (ml-latest, ml-25m...).

Formats:
  * ``u.data``: ``user<TAB>item<TAB>rating<TAB>unix_ts`` per line, no header
    (any whitespace separates fields; CRLF line ends are fine).
  * ``ratings.csv``: header naming ``userId,movieId,rating,timestamp`` (any
    column order), then one comma-separated rating per line.

Labels: rating >= 4 is a positive, rating <= 2 a dislike, anything between
(3, and 2.5 / 3.5 in half-star files) is neither: dropped and counted in
``Dataset.neutral``. The item catalog still holds items that only got
neutral ratings (they are movies one could recommend); users are those with at
least one kept event.

Item metadata: ``u.item`` beside ``u.data`` (ISO-8859-1, ``id|title|...|flags``)
gives ``item_features["genre"]`` = index of the first set genre flag + 1
(0 = unknown / no flag); ``movies.csv`` beside ``ratings.csv`` gives the first
listed genre (numbered in sorted name order, from 1).

A malformed line -- wrong field count, an id that is not ASCII digits or
does not fit in int64 (``²``, ``-1``, 25 digits; see :mod:`trainer.data.ids`),
a rating or timestamp that is not a plain decimal, a rating outside [0.5, 5],
a fractional timestamp -- raises a DataError naming file and line, or with
``skip_bad_lines`` is skipped and counted in ``Dataset.skipped_lines``. Blank
lines are not data and are ignored.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from pathlib import Path

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, Dataset
from trainer.data.errors import BadLines, DataError
from trainer.data.ids import id_problem, number_problem, plain_decimals, plain_ids
from trainer.data.split import assemble, attach_feature

log = logging.getLogger(__name__)

CSV_COLUMNS = ("userId", "movieId", "rating", "timestamp")
MIN_RATING, MAX_RATING = 0.5, 5.0


def resolve(path: str | os.PathLike) -> tuple[Path, str]:
    """(file, format) for a PATH of ``movielens:PATH``; format is ``udata`` or ``csv``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name, fmt in (("u.data", "udata"), ("ratings.csv", "csv")):
            if (p / name).is_file():
                return p / name, fmt
        raise DataError("directory holds neither u.data nor ratings.csv", path=str(p))
    if not p.is_file():
        raise DataError(
            "no such file or directory (movielens:PATH wants u.data, ratings.csv or their directory)",
            path=str(p),
        )
    return p, ("csv" if p.suffix.lower() == ".csv" else "udata")


Rows = tuple[np.ndarray, np.ndarray]
"""(ids int64 [L, 2] = user, item; values float64 [L, 2] = rating, timestamp)."""


def _empty_rows() -> Rows:
    return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.float64)


def _check_rows(rows: np.ndarray) -> Rows | None:
    """The columns (user, item | rating, ts) of ASCII str rows [L, 4] if every row is valid."""
    ids, nums = rows[:, :2], rows[:, 2:]
    if not (plain_ids(ids) and plain_decimals(nums)):
        return None
    values = nums.astype(np.float64)
    rating, ts = values[:, 0], values[:, 1]
    ok = (rating >= MIN_RATING) & (rating <= MAX_RATING) & (ts == np.floor(ts))
    return (ids.astype(np.int64), values) if ok.all() else None


def _fast_rows(lines: list[str], sep: str, perm: list[int]) -> Rows | None:
    """Vectorised parse of well-formed lines; None when any line needs a closer look."""
    if not lines:
        return _empty_rows()
    if any(line.count(sep) != 3 or not line.isascii() for line in lines):
        return None
    rows = np.array(sep.join(lines).split(sep)).reshape(len(lines), 4)[:, perm]
    return _check_rows(np.char.strip(rows))


def _slow_rows(
    numbered: list[tuple[int, str]], sep: str | None, perm: list[int], bad: BadLines
) -> Rows:
    """Line-by-line parse with exact diagnostics; the good rows."""
    ids: list[tuple[int, int]] = []
    values: list[tuple[float, float]] = []
    for no, line in numbered:
        fields = line.split() if sep is None else [f.strip() for f in line.split(sep)]
        if len(fields) != 4:
            bad.bad(no, f"expected 4 fields (user, item, rating, timestamp), found {len(fields)}")
            continue
        user, item, rating_s, ts_s = (fields[j] for j in perm)
        why = id_problem(user) or id_problem(item)
        if why is not None:
            bad.bad(no, f"user and item ids must be non-negative integers: {why}")
            continue
        why = number_problem(rating_s, "rating")
        if why is not None:
            bad.bad(no, why)
            continue
        rating = float(rating_s)
        if not MIN_RATING <= rating <= MAX_RATING:
            bad.bad(no, f"rating {rating_s} is outside [{MIN_RATING}, {MAX_RATING}]")
            continue
        ts = float(ts_s) if number_problem(ts_s, "timestamp") is None else math.nan
        if not math.isfinite(ts) or ts != int(ts):
            bad.bad(no, f"timestamp {ts_s!r} must be a non-negative integer (unix seconds)")
            continue
        ids.append((int(user), int(item)))
        values.append((rating, ts))
    if not ids:
        return _empty_rows()
    return np.array(ids, dtype=np.int64), np.array(values, dtype=np.float64)


def _read_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")  # a leading BOM is not data
    return [(i, line) for i, line in enumerate(text.splitlines(), start=1) if line.strip()]


def read_ratings(path: Path, fmt: str, bad: BadLines) -> Rows:
    """(ids int64 [L, 2] user, item; values float64 [L, 2] rating, ts) of a ratings file."""
    numbered = _read_lines(path)
    # u.data is tab-separated; the slow path also takes any whitespace.
    fast_sep, sep = "\t", None
    perm = [0, 1, 2, 3]
    if fmt == "csv":
        fast_sep = sep = ","
        if not numbered:
            raise DataError(
                f"empty file; expected the header {','.join(CSV_COLUMNS)}", path=str(path)
            )
        no, header = numbered[0]
        names = [h.strip().strip('"') for h in header.split(",")]
        if sorted(names) != sorted(CSV_COLUMNS):
            raise DataError(
                f"header {header!r}: expected the columns {','.join(CSV_COLUMNS)}",
                path=str(path),
                line=no,
            )
        numbered = numbered[1:]
        perm = [names.index(c) for c in CSV_COLUMNS]
    rows = _fast_rows([line for _, line in numbered], fast_sep, perm)
    return rows if rows is not None else _slow_rows(numbered, sep, perm, bad)


def _udata_genres(path: Path, bad: BadLines) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(item ids, genre = first flag + 1, vocabulary size) from ``u.item``."""
    ids, genres, width = [], [], 0
    for no, line in _read_lines(path):
        fields = line.split("|")
        flags = fields[5:]
        if (
            len(fields) < 6
            or id_problem(fields[0].strip()) is not None
            or any(f.strip() not in ("0", "1") for f in flags)
        ):
            bad.bad(no, "expected id|title|release|video release|url|genre flags (0/1)")
            continue
        width = max(width, len(flags))
        set_flags = [i for i, f in enumerate(flags) if f.strip() == "1"]
        ids.append(str(int(fields[0])))
        genres.append(set_flags[0] + 1 if set_flags else 0)
    return (np.array(ids), np.array(genres, dtype=np.int32), width + 1) if ids else None


def _csv_genres(path: Path, bad: BadLines) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(item ids, first genre numbered from 1, vocabulary size) from ``movies.csv``."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    rows = list(csv.reader(io.StringIO(text)))
    ids, first = [], []
    for no, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) < 3 or id_problem(row[0].strip()) is not None:
            bad.bad(no, "expected movieId,title,genres")
            continue
        genre = row[-1].split("|")[0].strip()
        ids.append(str(int(row[0])))
        first.append("" if genre in ("", "(no genres listed)") else genre)
    if not ids:
        return None
    names = sorted({g for g in first if g})
    number = {g: i + 1 for i, g in enumerate(names)}
    return (
        np.array(ids),
        np.array([number.get(g, 0) for g in first], dtype=np.int32),
        len(names) + 1,
    )


def read_movielens(
    path: str | os.PathLike, *, skip_bad_lines: bool = False, source: str | None = None
) -> Dataset:
    """Read MovieLens ratings (format in the module docstring) into a timestamped Dataset.

    Args:
      path: a ``u.data`` file, a ``ratings.csv`` file, or a directory holding one.
      skip_bad_lines: skip and count malformed lines instead of raising.
      source: the SRC string to record (default ``movielens:<path>``).
    """
    file, fmt = resolve(path)
    bad = BadLines(str(file), skip_bad_lines)
    ids, values = read_ratings(file, fmt, bad)
    user, item, rating = ids[:, 0], ids[:, 1], values[:, 0]
    labels = np.where(rating >= 4, POSITIVE, np.where(rating <= 2, DISLIKE, 0)).astype(np.int8)
    keep = labels != 0
    if not keep.any():
        raise DataError("no rating >= 4 or <= 2: nothing to train on", path=str(file))
    ds = assemble(
        source=source or f"movielens:{path}",
        kind="movielens",
        user_raw=user[keep],
        item_raw=item[keep],
        labels=labels[keep],
        ts=values[keep, 1],
        catalog=np.unique(item[~keep]),
        neutral=int((~keep).sum()),
        numeric_ids=True,
    )
    skipped = bad.report()
    meta_name, meta_reader = (
        ("u.item", _udata_genres) if fmt == "udata" else ("movies.csv", _csv_genres)
    )
    meta_path = file.parent / meta_name
    if meta_path.is_file():
        meta_bad = BadLines(str(meta_path), skip_bad_lines)
        genres = meta_reader(meta_path, meta_bad)
        if genres is not None:
            attach_feature(ds, "genre", *genres)
        skipped += meta_bad.report()
    ds.skipped_lines = skipped
    log.info("%s: %d events (%d neutral ratings dropped)", file, len(ds.users), ds.neutral)
    return ds
