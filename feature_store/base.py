"""The online store interface: what serving reads per request and what ingest writes.

Two implementations share it (``redis.py``, ``sqlite.py``) and one contract
test suite (``tests/feature_store/test_contract.py``) runs against both.
The interface is async because the API is; synchronous callers (CLI, trainer)
use :func:`feature_store.run_sync`.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feature_store.events import Event


class StoreError(RuntimeError):
    """Base class of store errors."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached within the configured timeout/retries.

    Serving turns this into a degraded answer; writers report the batch as failed
    (nothing in it was acknowledged).
    """


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of :meth:`OnlineStore.append_events`: every event is in exactly one count."""

    accepted: int
    duplicates: int


@dataclass(slots=True)
class UserState:
    """A user's live state, as a request needs it.

    Attributes:
      user_id: the user.
      positives: recent positive item ids, oldest first, at most ``positives_cap``.
      dislikes: ``(item_id, ts)`` of the distinct disliked items, oldest first, at most
        ``dislikes_cap`` (default: all of them; serving filters every one).
      seen: every item the user interacted with (capped), when requested, else None.
    """

    user_id: str
    positives: list[str] = field(default_factory=list)
    dislikes: list[tuple[str, float]] = field(default_factory=list)
    seen: set[str] | None = None

    @property
    def known(self) -> bool:
        return bool(self.positives or self.dislikes or self.seen)


@dataclass(frozen=True, slots=True)
class LogBatch:
    """Events read from the durable log after a cursor, and the cursor to commit."""

    events: list[Event]
    cursor: str


class OnlineStore(abc.ABC):
    """Per-user online state plus the durable event log.

    Implementations must: apply one event's state change atomically; append to
    the durable log before :meth:`append_events` returns; count each
    ``event_id`` once (idempotent across processes).
    """

    url: str

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create schema. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers within the timeout."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        """Apply and log events; duplicates (same ``event_id``) are counted, not applied.

        Raises:
          StoreUnavailable: nothing in the batch is acknowledged; the caller may retry
            (idempotency makes a retry safe).
        """

    @abc.abstractmethod
    async def get_users(
        self, user_ids: Sequence[str], *, with_seen: bool = False
    ) -> dict[str, UserState]:
        """States of several users (one round trip per backend where possible).

        Unknown users are returned with empty state. Raises StoreUnavailable.
        """

    async def get_user(self, user_id: str, *, with_seen: bool = False) -> UserState:
        return (await self.get_users([user_id], with_seen=with_seen))[user_id]

    @abc.abstractmethod
    async def forget_user(self, user_id: str) -> int:
        """Erase a user's state and log entries; return the number of log events removed."""

    @abc.abstractmethod
    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store metadata dicts per item id (replacing previous values)."""

    @abc.abstractmethod
    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Metadata of the known items among ``item_ids``."""

    @abc.abstractmethod
    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        """Events appended after ``cursor`` (None = from the start), in log order."""

    async def note_consumed(self, consumer: str, cursor: str) -> None:  # noqa: B027 - optional hook
        """Record that ``consumer`` has durably exported the log up to ``cursor``.

        Informational (lag monitoring, retention); the exporter's own cursor file
        is the source of truth. Default: nothing.
        """

    async def __aenter__(self) -> OnlineStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
