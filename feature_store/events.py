"""The event schema shared by the online store, the event log and the trainer."""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Event types and their role: ``positive`` events are softmax targets and feed
#: the history; ``dislike`` events are NTR targets, feed the dislike input and
#: are filtered out at serving; ``neutral`` events are only "seen".
POSITIVE = "positive"
DISLIKE = "dislike"
NEUTRAL = "neutral"
EVENT_TYPES: dict[str, str] = {
    "view": POSITIVE,
    "click": POSITIVE,
    "like": POSITIVE,
    "purchase": POSITIVE,
    "dislike": DISLIKE,
    "impression": NEUTRAL,
}

MAX_ID_LENGTH = 256
#: Events stamped further than this in the future are refused (clock skew allowance).
MAX_FUTURE_SKEW_S = 300.0
#: Events older than this (2000-01-01) are refused as almost surely a unit error (ms vs s).
MIN_TS = 946684800.0


class EventError(ValueError):
    """An event is invalid; ``field`` names the offending field."""

    def __init__(self, field: str, message: str, index: int | None = None):
        self.field = field
        self.index = index
        where = f"events[{index}].{field}" if index is not None else field
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class Event:
    """One user-item interaction.

    Attributes:
      event_id: idempotency key; the same id is accepted once.
      user_id: opaque user id.
      item_id: opaque item id.
      type: one of ``EVENT_TYPES``.
      ts: when it happened, seconds since the epoch (UTC).
      received_at: when the store acknowledged it, seconds since the epoch.
    """

    event_id: str
    user_id: str
    item_id: str
    type: str
    ts: float
    received_at: float

    @property
    def role(self) -> str:
        return EVENT_TYPES[self.type]


def _check_id(value: Any, field: str, index: int | None) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise EventError(field, f"must be a string, got {type(value).__name__}", index)
    if not value or len(value) > MAX_ID_LENGTH:
        raise EventError(field, f"must be 1..{MAX_ID_LENGTH} characters", index)
    if any(ch in value for ch in "\x00\n\r"):
        raise EventError(field, "must not contain NUL or newline characters", index)
    return value


def check_id(value: Any, field: str, index: int | None = None) -> str:
    """A valid id (user, item, event) as a string, or :class:`EventError` naming ``field``."""
    return _check_id(value, field, index)


def make_event(
    raw: Mapping[str, Any],
    *,
    index: int | None = None,
    now: float | None = None,
) -> Event:
    """Validate a raw mapping into an :class:`Event`.

    Missing ``event_id`` gets a random UUID (so such an event is not
    idempotent); missing ``ts`` is ``now``. Raises :class:`EventError`.
    """
    now = time.time() if now is None else now
    user_id = _check_id(raw.get("user_id"), "user_id", index)
    item_id = _check_id(raw.get("item_id"), "item_id", index)
    etype = raw.get("type")
    if etype not in EVENT_TYPES:
        raise EventError(
            "type", f"unknown event type {etype!r}; expected one of {sorted(EVENT_TYPES)}", index
        )
    event_id = raw.get("event_id")
    event_id = uuid.uuid4().hex if event_id is None else _check_id(event_id, "event_id", index)
    ts_raw = raw.get("ts")
    if ts_raw is None:
        ts = now
    else:
        if isinstance(ts_raw, bool) or not isinstance(ts_raw, (int, float)):
            raise EventError(
                "ts", f"must be a number (seconds since epoch), got {type(ts_raw).__name__}", index
            )
        ts = float(ts_raw)
        if not math.isfinite(ts):
            raise EventError("ts", "must be finite", index)
        if ts > now + MAX_FUTURE_SKEW_S:
            raise EventError(
                "ts",
                f"{ts} is in the future (now {now:.0f}); timestamps are seconds since epoch",
                index,
            )
        if ts < MIN_TS:
            raise EventError(
                "ts", f"{ts} is before 2000-01-01; timestamps are seconds since epoch", index
            )
    return Event(
        event_id=event_id, user_id=user_id, item_id=item_id, type=etype, ts=ts, received_at=now
    )


def check_events(events: Sequence[Event], *, now: float | None = None) -> None:
    """Validate already-built events before a store applies them (all or nothing).

    The store accepts historical timestamps (bulk loads of old data sets, e.g.
    MovieLens from 1997), so only what would corrupt state or the export is
    refused: unknown types, bad ids, and a ``ts`` that is not a finite number
    of seconds after 1970-01-01 and at most ``MAX_FUTURE_SKEW_S`` ahead of
    ``now``. Raises :class:`EventError` naming ``events[i].field``.
    """
    now = time.time() if now is None else now
    for i, ev in enumerate(events):
        if not isinstance(ev, Event):
            raise EventError(
                "event", f"expected an Event, got {type(ev).__name__} (build it with make_event)", i
            )
        _check_id(ev.event_id, "event_id", i)
        _check_id(ev.user_id, "user_id", i)
        _check_id(ev.item_id, "item_id", i)
        if ev.type not in EVENT_TYPES:
            raise EventError(
                "type", f"unknown event type {ev.type!r}; expected one of {sorted(EVENT_TYPES)}", i
            )
        if (
            isinstance(ev.ts, bool)
            or not isinstance(ev.ts, (int, float))
            or not math.isfinite(ev.ts)
        ):
            raise EventError(
                "ts", f"must be a finite number of seconds since epoch, got {ev.ts!r}", i
            )
        if ev.ts <= 0:
            raise EventError(
                "ts", f"{ev.ts} is not after 1970-01-01; timestamps are seconds since epoch", i
            )
        if ev.ts > now + MAX_FUTURE_SKEW_S:
            raise EventError(
                "ts",
                f"{ev.ts} is in the future (now {now:.0f}); timestamps are seconds since epoch",
                i,
            )
