"""``twotower ingest --data SRC --store URL``: bulk-load a data source into the online store.

Each row of the source's :class:`~trainer.data.dataset.Dataset` becomes one
event: a positive -> ``like``, a dislike -> ``dislike``. Event ids are
deterministic (a hash of the source kind, user, item, ts, type and the
occurrence number of that exact tuple), so re-running an ingest, or
ingesting the same data from another path, adds nothing. Sources without
time (``lightgcn``) get ``ts = UNTIMED_BASE_TS + the row's position in the
user's list`` (seconds), which keeps the given per-user order and is stable
across runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

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


async def ingest_dataset(
    store: OnlineStore, ds: Dataset, *, progress: bool = True, batch_size: int = BATCH
) -> AppendResult:
    """Append every row of ``ds`` to an open store in batches; returns the summed counts.

    A progress bar goes to stderr when ``progress``. Raises StoreUnavailable /
    EventError from the store (batches before the failing one stay applied; a
    re-run completes the load without duplicates).
    """
    from tqdm import tqdm

    accepted = duplicates = 0
    batch: list[Event] = []
    with tqdm(
        total=len(ds.users), unit="ev", file=sys.stderr, disable=not progress, desc="ingest"
    ) as bar:
        for ev in events_from_dataset(ds):
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


def ingest_command(args: argparse.Namespace) -> int:
    """Entry point of ``twotower ingest``; prints a JSON summary on stdout. Returns the exit code."""
    from feature_store import open_store, run_sync
    from trainer.data.sources import load_source

    started = time.perf_counter()
    store = open_store(args.store)  # a bad URL fails before the data is read (exit 2)
    ds = load_source(args.data, skip_bad_lines=bool(getattr(args, "skip_bad_lines", False)))

    async def load() -> AppendResult:
        async with store:
            return await ingest_dataset(store, ds, progress=True)

    result = run_sync(load())
    summary = {
        "source": args.data,
        "events": int(len(ds.users)),
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "skipped_lines": int(ds.skipped_lines),
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary))
    return 0
