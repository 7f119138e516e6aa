"""Online feature store (Redis, SQLite) and the durable event log.

Usage::

    async with open_store("sqlite:///store.sqlite") as store:
        await store.append_events([make_event({...})])
        state = await store.get_user("u1")

Synchronous callers wrap a coroutine with :func:`run_sync`.
"""

from __future__ import annotations

from typing import Any

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
from feature_store.sync import run_sync
from feature_store.urls import RedisConfig, SQLiteConfig, StoreURLError, parse_url

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


def open_store(url: str, **options: Any) -> OnlineStore:
    """The store a URL names, configured but not yet connected.

    Call ``await store.open()`` (or use ``async with``). Keyword ``options``
    override the URL's query parameters (see :mod:`feature_store.urls`).

    Raises:
      StoreURLError: the URL or an option is malformed.
    """
    config = parse_url(url, **options)
    if isinstance(config, SQLiteConfig):
        from feature_store.sqlite import SQLiteStore

        return SQLiteStore(url, config)
    assert isinstance(config, RedisConfig)
    if config.cluster:
        from feature_store.redis_cluster import RedisClusterStore

        return RedisClusterStore(url, config)
    from feature_store.redis import RedisStore

    return RedisStore(url, config)
