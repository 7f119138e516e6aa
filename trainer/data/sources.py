"""``SRC`` strings (docs/CONTRACT.md, "Data sources") -> :class:`Dataset`.

Accepted forms::

    synthetic[:key=value,...]   seeded generator (see trainer.data.synthetic)
    movielens:PATH              a u.data file, a ratings.csv, or a directory holding one
    lightgcn:DIR                DIR/train.txt, valid.txt, test.txt (the given split)
    events:STORE_URL            every event of the store's durable log
    events:DIR                  every event of a Parquet log export (e.g. ART/events)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from trainer.data.dataset import Dataset
from trainer.data.errors import DataError

if TYPE_CHECKING:
    from feature_store.events import Event

log = logging.getLogger(__name__)

FORMS = (
    "synthetic[:key=value,...]",
    "movielens:PATH (u.data, ratings.csv or a directory holding one)",
    "lightgcn:DIR (with train.txt, valid.txt, test.txt)",
    "events:STORE_URL (sqlite:///path, redis://...) or events:DIR (a log export, e.g. ART/events)",
)


def _bad_spec(spec: str, why: str) -> DataError:
    return DataError(f"bad data source {spec!r}: {why}; accepted forms: " + "; ".join(FORMS))


def load_source(spec: str, *, skip_bad_lines: bool = False, progress: bool = False) -> Dataset:
    """Read the data source named by ``spec`` (an ``SRC`` string of docs/CONTRACT.md).

    Args:
      spec: one of the forms in this module's docstring.
      skip_bad_lines: skip malformed lines of data files (counted in
        ``Dataset.skipped_lines`` and logged) instead of raising.
      progress: log what is being read (the readers are fast; no bar needed).
    Raises:
      DataError: a bad spec, a missing file, or a malformed line (file:line).
    """
    spec, kind, arg = _split(spec)
    if progress:
        log.info("reading %s", spec)
    if kind == "synthetic":
        from trainer.data.synthetic import generate
        from trainer.data.synthetic_params import parse_params

        return generate(parse_params(arg), source=spec)
    if kind == "movielens":
        from trainer.data.movielens import read_movielens

        return read_movielens(arg, skip_bad_lines=skip_bad_lines, source=spec)
    if kind == "lightgcn":
        from trainer.data.lightgcn import read_lightgcn

        return read_lightgcn(arg, skip_bad_lines=skip_bad_lines, source=spec)
    if kind == "events":
        from trainer.data.events_source import read_event_log

        _check_events(arg)  # a missing SQLite file would be created (empty) by reading it
        return read_event_log(arg)
    raise _bad_spec(spec, f"unknown source kind {kind!r}")  # pragma: no cover - _split refused it


def _split(spec: str) -> tuple[str, str, str]:
    """``(spec stripped, kind, argument)``; raises DataError for an empty spec, an unknown
    kind or a kind without its argument."""
    if not isinstance(spec, str) or not spec.strip():
        raise _bad_spec(str(spec), "empty")
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if kind == "synthetic":
        return spec, kind, arg
    if kind not in ("movielens", "lightgcn", "events"):
        raise _bad_spec(spec, f"unknown source kind {kind!r}")
    if not arg:
        raise _bad_spec(
            spec, f"{kind} needs a {'URL' if kind == 'events' else 'path'} after the colon"
        )
    return spec, kind, arg


def check_source(spec: str) -> None:
    """Refuse a ``spec`` that cannot be read, without reading any data (milliseconds).

    Checks the form, the synthetic parameters, that a file or directory exists
    with the files it needs, and that an ``events:`` store URL parses (and its
    SQLite file exists). What only reading can tell (a malformed line) is left
    to :func:`load_source`.

    Raises:
      DataError / StoreURLError: what is wrong and where.
    """
    _spec, kind, arg = _split(spec)
    if kind == "synthetic":
        from trainer.data.synthetic_params import parse_params

        parse_params(arg)
    elif kind == "movielens":
        from trainer.data.movielens import resolve

        resolve(arg)
    elif kind == "lightgcn":
        from trainer.data.lightgcn import check_directory

        check_directory(arg)
    else:
        _check_events(arg)


def _check_events(arg: str) -> None:
    """``events:`` names a directory that exists, or a store URL that parses (a SQLite
    file that exists: opening a missing one would create an empty store). A Redis
    store's reachability is only known when it is read."""
    if "://" not in arg:
        if not Path(arg).is_dir():
            raise DataError(
                f"events:{arg}: not a store URL (sqlite:///..., redis://...) and no such "
                "directory (an export directory such as ART/events)"
            )
        return
    from common.urls import redact_url
    from feature_store.urls import missing_sqlite_file

    missing = missing_sqlite_file(arg)
    if missing is not None:
        raise DataError(
            f"events:{redact_url(arg)}: no such store file {missing} (nothing was ever written there)"
        )


def dataset_from_events(events: Iterable[Event], source: str) -> Dataset:
    """A timestamped :class:`Dataset` from feature-store events.

    Roles come from ``feature_store.events.EVENT_TYPES``: ``positive`` events
    are positives, ``dislike`` events dislikes, ``neutral`` ones are counted in
    ``Dataset.neutral`` and dropped. A repeated ``event_id`` is kept once.
    """
    from trainer.data.events_source import dataset_from_events as build

    return build(events, source)
