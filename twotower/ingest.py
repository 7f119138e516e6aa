"""Bulk-load a data source into the online store (``twotower ingest --data SRC --store URL``).

Each row of the source's :class:`~trainer.data.dataset.Dataset` becomes one
event: a positive -> ``like``, a dislike -> ``dislike``. Event ids are
deterministic (a hash of the source kind, user, item, ts, type and the
occurrence number of that exact tuple), so re-running an ingest, or
ingesting the same data from another path, adds nothing. Sources without
time (``lightgcn``) get ``ts = UNTIMED_BASE_TS + the row's position in the
user's list`` (seconds), which keeps the given per-user order and is stable
across runs. Item features the source has (MovieLens genres, synthetic
categories) become item metadata (``{"genre": 3}``; 0 = unknown is left out).

An ``events:URL`` source (another store's log) is copied event by event:
same event ids, types and times, so copying it twice, or into the store it
came from, adds nothing; the item metadata of its items is copied too.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from feature_store.base import AppendResult, OnlineStore
from feature_store.events import Event

if TYPE_CHECKING:
    from trainer.data.dataset import Dataset

#: 2020-01-01T00:00:00Z: the base of synthetic timestamps for untimed sources.
UNTIMED_BASE_TS = 1_577_836_800.0
BATCH = 2000


def event_id_for(kind: str, user: str, item: str, ts: float, etype: str, occurrence: int) -> str:
    """Deterministic event id (32 hex chars) of one source row."""
    key = "\x1f".join([kind, user, item, repr(float(ts)), etype, str(occurrence)])
    return hashlib.sha1(key.encode()).hexdigest()[:32]


def events_from_dataset(ds: Dataset, *, received_at: float | None = None) -> Iterator[Event]:
    """The dataset's rows as events, in the dataset's order (user, then time).

    Args:
      ds: a Dataset (labels POSITIVE=1 / DISLIKE=-1, ts float64 seconds or NaN).
      received_at: stamp for ``Event.received_at`` (the store replaces it on append).
    """
    from trainer.data.dataset import DISLIKE, POSITIVE

    received_at = time.time() if received_at is None else received_at
    users = np.asarray(ds.users)
    items = np.asarray(ds.items)
    labels = np.asarray(ds.labels)
    ts = np.asarray(ds.ts, dtype=np.float64)
    user_ids = [str(u) for u in ds.user_ids]
    item_ids = [str(i) for i in ds.item_ids]
    order_in_user: dict[int, int] = {}
    occurrences: dict[tuple[str, str, float, str], int] = {}
    for row in range(len(users)):
        label = int(labels[row])
        if label == POSITIVE:
            etype = "like"
        elif label == DISLIKE:
            etype = "dislike"
        else:
            raise ValueError(
                f"{ds.source}: row {row} has label {label}; expected {POSITIVE} or {DISLIKE}"
            )
        u = int(users[row])
        user, item = user_ids[u], item_ids[int(items[row])]
        t = float(ts[row])
        if not np.isfinite(t):
            n = order_in_user.get(u, 0)
            order_in_user[u] = n + 1
            t = UNTIMED_BASE_TS + n
        key = (user, item, t, etype)
        occ = occurrences.get(key, 0)
        occurrences[key] = occ + 1
        yield Event(
            event_id=event_id_for(ds.kind, user, item, t, etype, occ),
            user_id=user,
            item_id=item,
            type=etype,
            ts=t,
            received_at=received_at,
        )


def item_metadata(ds: Dataset) -> dict[str, dict[str, int]]:
    """``{item_id: {feature: value}}`` of the dataset's known item features (value 0 = unknown)."""
    out: dict[str, dict[str, int]] = {}
    for name, values in sorted(ds.item_features.items()):
        for item, value in zip(ds.item_ids, np.asarray(values), strict=True):
            if int(value) != 0:
                out.setdefault(str(item), {})[name] = int(value)
    return out


async def _append_all(
    store: OnlineStore, events: Iterable[Event], total: int | None, progress: bool, batch_size: int
) -> AppendResult:
    from tqdm import tqdm

    accepted = duplicates = 0
    batch: list[Event] = []
    with tqdm(total=total, unit="ev", file=sys.stderr, disable=not progress, desc="ingest") as bar:
        for ev in events:
            batch.append(ev)
            if len(batch) >= batch_size:
                res = await store.append_events(batch)
                accepted, duplicates = accepted + res.accepted, duplicates + res.duplicates
                bar.update(len(batch))
                batch = []
        if batch:
            res = await store.append_events(batch)
            accepted, duplicates = accepted + res.accepted, duplicates + res.duplicates
            bar.update(len(batch))
    return AppendResult(accepted=accepted, duplicates=duplicates)


async def _put_metadata(
    store: OnlineStore, items: dict[str, dict[str, Any]], batch_size: int
) -> None:
    ids = sorted(items)
    for start in range(0, len(ids), batch_size):
        await store.put_item_metadata({i: items[i] for i in ids[start : start + batch_size]})


async def ingest_dataset(
    store: OnlineStore, ds: Dataset, *, progress: bool = True, batch_size: int = BATCH
) -> AppendResult:
    """Append every row of ``ds`` to an open store in batches and put its item metadata.

    Returns the summed counts. A progress bar goes to stderr when ``progress``.
    Raises StoreUnavailable / EventError from the store (batches before the failing
    one stay applied; a re-run completes the load without duplicates).
    """
    result = await _append_all(store, events_from_dataset(ds), len(ds.users), progress, batch_size)
    await _put_metadata(store, item_metadata(ds), batch_size)
    return result


async def ingest_event_log(
    store: OnlineStore, source_url: str, *, progress: bool = True, batch_size: int = BATCH
) -> tuple[AppendResult, int, int]:
    """Copy another store's log (and its items' metadata) into an open store, ids unchanged.

    Returns ``(counts, events read, items with metadata)``.
    """
    from feature_store import open_store
    from feature_store.archive import iter_events

    seen: set[str] = set()
    read = 0

    def events() -> Iterator[Event]:
        nonlocal read
        for ev in iter_events(source_url):
            read += 1
            seen.add(ev.item_id)
            yield ev

    result = await _append_all(store, events(), None, progress, batch_size)
    meta: dict[str, dict[str, Any]] = {}
    async with open_store(source_url) as source:
        ids = sorted(seen)
        for start in range(0, len(ids), batch_size):
            meta.update(await source.get_item_metadata(ids[start : start + batch_size]))
    await _put_metadata(store, meta, batch_size)
    return result, read, len(meta)
