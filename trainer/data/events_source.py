"""The project's own event log as a data source (``events:STORE_URL``).

Events become a timestamped :class:`Dataset` split by temporal leave-last-out
(:mod:`trainer.data.split`). Roles come from
``feature_store.events.EVENT_TYPES``: ``positive`` -> POSITIVE, ``dislike``
-> DISLIKE, ``neutral`` (impressions) -> dropped and counted in
``Dataset.neutral``. The log is at-least-once durable storage, so a repeated
``event_id`` is kept once (first occurrence). Events keep their log order as
the tie-break between equal timestamps.

Item features come from the store's item metadata (what ``twotower ingest``
writes: same names and values as the source's own features; rules in
:mod:`trainer.data.item_metadata`): read from the store for
``events:STORE_URL``, from the export's copy (``_item_metadata.json``, as of
its last run; no store needed) for ``events:DIR``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from common.urls import redact_url
from feature_store.base import StoreError
from feature_store.events import DISLIKE as ROLE_DISLIKE
from feature_store.events import EVENT_TYPES, Event
from feature_store.events import POSITIVE as ROLE_POSITIVE
from trainer.data.dataset import DISLIKE, POSITIVE, Dataset
from trainer.data.errors import DataError
from trainer.data.item_metadata import attach_item_metadata
from trainer.data.split import assemble

log = logging.getLogger(__name__)

NO_METADATA_COPY = (
    "the export has no copy of the store's item metadata: it was last exported by an "
    "older version; the next export run (`twotower pipeline`) writes one"
)


def dataset_from_events(events: Iterable[Event], source: str) -> Dataset:
    """A timestamped Dataset from feature-store events (rules in the module docstring).

    Args:
      events: any iterable of :class:`feature_store.events.Event`, in log order.
      source: the SRC string to record.
    Raises:
      DataError: no positive or dislike event, or an event of an unknown type.
    """
    users: list[str] = []
    items: list[str] = []
    labels: list[int] = []
    ts: list[float] = []
    seen: set[str] = set()
    neutral = duplicates = 0
    for n, ev in enumerate(events):
        if ev.event_id in seen:
            duplicates += 1
            continue
        seen.add(ev.event_id)
        role = EVENT_TYPES.get(ev.type)
        if role is None:
            raise DataError(
                f"event #{n} ({ev.event_id}): unknown type {ev.type!r}; known: {sorted(EVENT_TYPES)}"
            )
        if role == ROLE_POSITIVE:
            labels.append(POSITIVE)
        elif role == ROLE_DISLIKE:
            labels.append(DISLIKE)
        else:
            neutral += 1
            continue
        users.append(ev.user_id)
        items.append(ev.item_id)
        ts.append(float(ev.ts))
    if duplicates:
        log.info("%s: %d repeated event ids kept once", source, duplicates)
    if not labels:
        raise DataError(f"{source}: no positive or dislike events ({neutral} neutral)")
    return assemble(
        source=source,
        kind="events",
        user_raw=np.array(users, dtype=object),
        item_raw=np.array(items, dtype=object),
        labels=np.array(labels, dtype=np.int8),
        ts=np.array(ts, dtype=np.float64),
        neutral=neutral,
    )


def read_event_log(url: str) -> Dataset:
    """Every event of the store's log at ``url``, or of a Parquet export directory, as a Dataset.

    ``url`` with a scheme (``sqlite:///...``, ``redis://...``, ``rediss://...``)
    is a store: its durable log as it is now, which keeps exported entries only
    for the store's ``log_retention``. Without one it is a directory written by
    the log export (``twotower pipeline`` keeps one at ``ART/events``): every
    event ever exported there, erasure tombstones applied.
    """
    if "://" not in url:
        return _read_export(Path(url))
    from feature_store.archive import item_metadata, iter_events  # imported on use

    ds = dataset_from_events(iter_events(url), source=f"events:{redact_url(url)}")
    return attach_item_metadata(ds, item_metadata(url, ds.item_ids))


def _read_export(path: Path) -> Dataset:
    from feature_store.archive import read_compacted, read_item_metadata

    if not path.is_dir():
        raise DataError(
            f"events:{path}: not a store URL (sqlite:///..., redis://...) and no such "
            "directory (an export directory such as ART/events)"
        )
    try:
        events = read_compacted(path)
        metadata = read_item_metadata(path)
    except (OSError, ValueError, StoreError) as exc:
        raise DataError(f"events:{path}: cannot read the export: {exc}") from exc
    if not events:
        raise DataError(f"events:{path}: the export holds no committed events")
    ds = dataset_from_events(events, source=f"events:{path}")
    return attach_item_metadata(ds, metadata, where=NO_METADATA_COPY)
