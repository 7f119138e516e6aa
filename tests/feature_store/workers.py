"""Process entry points for the concurrency tests (importable by a spawned interpreter)."""

from __future__ import annotations

from typing import Any


def append_in_process(url: str, raws: list[dict[str, Any]], go: Any, results: Any) -> None:
    """Open the store, wait for the start signal, append ``raws`` in one call, report the counts."""
    from feature_store import make_event, open_store, run_sync

    events = [make_event(r) for r in raws]

    async def work() -> tuple[int, int]:
        async with open_store(url) as store:
            await store.ping()  # connected before the race starts
            go.wait(30)
            res = await store.append_events(events)
            return res.accepted, res.duplicates

    try:
        results.put(run_sync(work()))
    except Exception as exc:  # reported to the parent, which fails the test with it
        results.put(f"{type(exc).__name__}: {exc}")
