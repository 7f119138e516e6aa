"""Every Redis key the store uses is built here, and only here.

Layout (``P`` = ``<prefix>:v2``; the version changes when the layout does;
``<U>``, ``<I>``, ``<C>`` are the encoded user, item and consumer ids, see
:func:`encode`)::

    P:{u:<U>}:pos      LIST   "<ts>|<item_id>", ts order, at most the store's positives_keep
    P:{u:<U>}:dis      ZSET   item_id -> latest dislike ts (never expires)
    P:{u:<U>}:seen     ZSET   item_id -> latest interaction ts, at most seen_keep
    P:{u:<U>}:ids      HASH   event_id -> nonce of the accepting call: the idempotency record
    P:{u:<U>}:log      ZSET   stream id -> its ms: the user's entries still in the stream
    P:{u:<U>}:pend     SET    Cluster only: event ids claimed but not yet applied
    P:{log}:events     STREAM the durable event log
    P:{log}:meta       HASH   store id, creation time, layout, storage caps
    P:{log}:forgotten  HASH   sha256(user_id) -> when it was forgotten (erasure tombstones)
    P:{log}:consumers  SET    names of the exporters that committed a cursor
    P:{log}:x:<C>      ZSET   an exporter's committed cursors -> commit time (retention)
    P:{log}:guards     HASH   Cluster only: "<U>:<E>" -> stream id of an event being appended
    P:{i:<I>}:meta     STRING item metadata (JSON)

Ids are opaque strings that may contain ``{``, ``}`` and ``:``. Inside key
names they are *encoded*: ``%``, ``{``, ``}`` and ``:`` are percent-escaped,
so an encoded id contains no hash-tag brace and no separator, distinct ids
give distinct encodings, and no key of one user can equal or overlap a key
of another. The ``{u:<U>}`` hash tag puts all of one user's keys in one
Redis Cluster slot, so a user's read is one pipeline to one node and the
per-user part of a write is a single-slot script.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT_VERSION = "v2"
_ESCAPES = {"%": "%25", "{": "%7B", "}": "%7D", ":": "%3A"}
_NEEDS_ESCAPE = frozenset(_ESCAPES)


def encode(value: str) -> str:
    """An id as it appears inside a key name: ``%``, ``{``, ``}``, ``:`` percent-escaped.

    Injective (``%`` itself is escaped) and free of braces and colons, so the
    encoded id can neither end a hash tag early nor look like a key suffix.
    """
    if not _NEEDS_ESCAPE.intersection(value):
        return value
    return "".join(_ESCAPES.get(ch, ch) for ch in value)


@dataclass(frozen=True, slots=True)
class UserKeys:
    pos: str
    dis: str
    seen: str
    ids: str
    log: str
    pend: str

    def state(self) -> tuple[str, str, str]:
        """The keys a read returns: positives, dislikes, seen."""
        return self.pos, self.dis, self.seen


class Keys:
    """Key builder for one prefix (tests use a unique prefix each)."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{LAYOUT_VERSION}"
        log = f"{self.base}:{{log}}"
        self.stream = f"{log}:events"
        self.meta = f"{log}:meta"
        self.forgotten = f"{log}:forgotten"
        self.consumers = f"{log}:consumers"
        self.guards = f"{log}:guards"

    def user(self, user_id: str) -> UserKeys:
        tag = f"{self.base}:{{u:{encode(user_id)}}}"
        return UserKeys(
            pos=f"{tag}:pos",
            dis=f"{tag}:dis",
            seen=f"{tag}:seen",
            ids=f"{tag}:ids",
            log=f"{tag}:log",
            pend=f"{tag}:pend",
        )

    @staticmethod
    def guard_field(user_id: str, event_id: str) -> str:
        """Cluster mode: an event's field in the guards hash (unambiguous: both parts encoded)."""
        return f"{encode(user_id)}:{encode(event_id)}"

    def consumer(self, name: str) -> str:
        """An exporter's commit history (cursor -> commit time), in the stream's slot."""
        return f"{self.base}:{{log}}:x:{encode(name)}"

    def item_meta(self, item_id: str) -> str:
        return f"{self.base}:{{i:{encode(item_id)}}}:meta"

    def pattern(self) -> str:
        """SCAN pattern matching every key of this prefix (for tests and tooling only)."""
        return f"{self.base}:*"
