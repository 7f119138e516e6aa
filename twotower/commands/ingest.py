"""``twotower ingest``: load SRC into the store and print a JSON summary."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from feature_store.base import AppendResult


def ingest_command(args: argparse.Namespace) -> int:
    """Entry point of ``twotower ingest``; prints a JSON summary on stdout. Returns the exit code."""
    from feature_store import open_store, run_sync
    from twotower.ingest import ingest_dataset, ingest_event_log, item_metadata

    started = time.perf_counter()
    store = open_store(args.store)  # a bad URL fails before the data is read (exit 2)
    kind, _, arg = str(args.data).strip().partition(":")
    if kind == "events" and arg:
        open_store(arg)  # a bad source URL: exit 2 before anything is written

        async def copy() -> tuple[AppendResult, int, int]:
            async with store:
                return await ingest_event_log(store, arg, progress=True)

        result, n_events, n_meta = run_sync(copy())
        skipped = 0
    else:
        from trainer.data.sources import load_source

        ds = load_source(args.data, skip_bad_lines=bool(getattr(args, "skip_bad_lines", False)))

        async def load() -> AppendResult:
            async with store:
                return await ingest_dataset(store, ds, progress=True)

        result = run_sync(load())
        n_events, n_meta, skipped = int(len(ds.users)), len(item_metadata(ds)), ds.skipped_lines
    summary = {
        "source": args.data,
        "events": n_events,
        "accepted": result.accepted,
        "duplicates": result.duplicates,
        "items_with_metadata": n_meta,
        "skipped_lines": int(skipped),
        "seconds": round(time.perf_counter() - started, 3),
    }
    print(json.dumps(summary))
    return 0
