"""Online feature store (Redis, SQLite) and the durable event log.

Usage::

    async with open_store("sqlite:///store.sqlite") as store:
        await store.append_events([make_event({...})])
        state = await store.get_user("u1")

Synchronous callers wrap a coroutine with :func:`run_sync`. Which backend a
URL opens: :mod:`feature_store.urls`.
"""

from __future__ import annotations

from feature_store.base import (
    AppendResult,
    LogBatch,
    OnlineStore,
    StoreError,
    StoreOutcomeUnknown,
    StoreUnavailable,
    UserState,
)
from feature_store.events import EVENT_TYPES, Event, EventError, check_events, make_event
from feature_store.options import StoreURLError
from feature_store.sync import run_sync
from feature_store.urls import open_store

__all__ = [
    "EVENT_TYPES",
    "AppendResult",
    "Event",
    "EventError",
    "LogBatch",
    "OnlineStore",
    "StoreError",
    "StoreOutcomeUnknown",
    "StoreURLError",
    "StoreUnavailable",
    "UserState",
    "check_events",
    "make_event",
    "open_store",
    "run_sync",
]
