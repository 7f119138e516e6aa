"""The online store interface: what serving reads per request and what ingest writes.

Two implementations share it (``redis.py``, ``sqlite.py``) and one contract
test suite (``tests/feature_store/test_contract.py``) runs against both.
The interface is async because the API is; synchronous callers (CLI, trainer)
use :func:`feature_store.run_sync`.

Errors: every failure of a store call is a :class:`StoreError`.
:class:`StoreUnavailable` means the backend could not be reached or answered
too late; for :meth:`OnlineStore.append_events` it means *nothing in the
batch was applied*. :class:`StoreOutcomeUnknown` (a StoreUnavailable) means
the batch was sent and some or all of it may have been applied. In both
cases retrying with the same event ids is safe: events the failed call
applied come back as duplicates, nothing is applied twice.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from feature_store.events import Event


class StoreError(RuntimeError):
    """Base class of store errors (misconfiguration, corrupt data, refused command)."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached, or did not answer within the configured timeout/retries.

    Serving turns this into a degraded answer. From ``append_events`` it means nothing
    in the batch was applied (unless it is the subclass :class:`StoreOutcomeUnknown`).
    """


class StoreOutcomeUnknown(StoreUnavailable):
    """An append was sent but its reply never came: some or all of its events may be applied.

    Nothing may be reported to the client as acknowledged, nor as "nothing was written".
    Retrying the *same* events (same ``event_id``\\ s) is safe and settles it: events the
    failed call applied are counted as duplicates by the retry, the others are applied.
    Events sent without an ``event_id`` got a random one and cannot be settled this way.
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


def user_hash(user_id: str) -> str:
    """The key of a user's erasure tombstone: sha256 of the id, hex (64 chars).

    Tombstones outlive the data they erase, so they hold no user id in clear.
    """
    return hashlib.sha256(user_id.encode()).hexdigest()


class OnlineStore(abc.ABC):
    """Per-user online state plus the durable event log.

    Guarantees of every implementation:

    * one event's state change is applied atomically, and is in the durable
      log before :meth:`append_events` returns;
    * idempotency: an event is identified by ``(user_id, event_id)``. The
      first append of that pair is applied; every later one - a resend, a
      retry, the same id with a different item or type - is a duplicate,
      counted and not applied, across processes and **forever** by default
      (``idempotency_ttl=0``). Ids are scoped to their user so the record
      lives beside the user's state (one Redis Cluster slot: the check and
      the state change are one atomic step); two users may use the same id.
      With the opt-in ``idempotency_ttl=T > 0`` an id is remembered at least
      ``T`` seconds after it was accepted (Redis: until the user has had no
      accepted event for ``T`` seconds), after which a resend is applied and
      logged again: the guarantee then only holds inside that window.
      :meth:`forget_user` also forgets the user's ids.
    * a dislike never expires (it stays filtered for good);
    * the log keeps every entry until every exporter that committed a cursor
      (:meth:`note_consumed`) is past it and ``log_retention`` has passed.

    ``store_id`` (set by :meth:`open`) is a random id made when the store's
    data was created; exporters record it and refuse a store with another id.
    """

    url: str
    store_id: str = ""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect / create schema and store id. Idempotent."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections. Idempotent."""

    @abc.abstractmethod
    async def ping(self) -> bool:
        """True when the backend answers within the timeout."""

    @abc.abstractmethod
    async def append_events(self, events: Sequence[Event]) -> AppendResult:
        """Apply and log events; duplicates (see the class docstring) are counted, not applied.

        The call bounds its own duration (the backend's timeouts and retries) and
        reports the outcome; cancelling it from outside (``asyncio.wait_for``) gives
        up that knowledge, so prefer the store's own timeouts.

        Raises:
          EventError: an event is invalid; nothing in the batch was applied.
          StoreOutcomeUnknown: sent, no reply; some events may be applied; retry them.
          StoreUnavailable: nothing in the batch was applied; the caller may retry.
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
        """Erase a user's state, ids and log entries and record an erasure tombstone.

        Returns the number of log entries removed. The tombstone (see
        :meth:`forgotten_users`) lets exporters purge the user's events that were
        exported before, even after the store's log dropped them.
        """

    @abc.abstractmethod
    async def forgotten_users(self) -> dict[str, float]:
        """Erasure tombstones: ``{user_hash(user_id): forgotten_at}`` (seconds since epoch).

        Events of that user received at or before ``forgotten_at`` must not be kept
        by any export; later events are new data.
        """

    @abc.abstractmethod
    async def put_item_metadata(self, items: Mapping[str, Mapping[str, Any]]) -> None:
        """Store metadata dicts per item id (replacing previous values)."""

    @abc.abstractmethod
    async def get_item_metadata(self, item_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Metadata of the known items among ``item_ids``."""

    @abc.abstractmethod
    async def read_log(self, cursor: str | None, limit: int = 10_000) -> LogBatch:
        """Events appended after ``cursor`` (None = from the start), in log order."""

    @abc.abstractmethod
    async def note_consumed(self, consumer: str, cursor: str) -> int:
        """Record that ``consumer`` has durably exported the log up to ``cursor``; trim.

        Registers the consumer (from then on the log keeps what it has not
        exported), then runs :meth:`trim_log`. Returns the entries trimmed.
        """

    @abc.abstractmethod
    async def trim_log(self, *, now: float | None = None) -> int:
        """Drop log entries every registered consumer exported ``log_retention`` seconds ago.

        ``now`` (seconds since epoch, default the clock) is the time retention is
        measured at. Nothing is trimmed before a consumer registered, with
        ``log_retention=-1``, or beyond the lowest committed cursor. Returns the
        number of entries trimmed.
        """

    async def __aenter__(self) -> OnlineStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
