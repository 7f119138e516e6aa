"""Every Redis key the store uses is built here, and only here.

Layout (``P`` = ``<prefix>:v1``; the version changes when the layout does)::

    P:{u:<user_id>}:pos        LIST   "<ts>|<item_id>", oldest first, capped
    P:{u:<user_id>}:dis        ZSET   item_id -> latest dislike ts, capped
    P:{u:<user_id>}:seen       ZSET   item_id -> latest interaction ts, capped
    P:{u:<user_id>}:log        LIST   "<stream id> <event_id>" of the user's log entries
    P:{u:<user_id>}:e:<event_id> STRING  idempotency key (value: the writing call's nonce), expires
    P:{log}:events             STREAM the durable event log
    P:{log}:g:<len>:<user_id>:<event_id>  STRING  Cluster mode only: the event's stream id, expires
    P:{i:<item_id>}:meta       STRING item metadata (JSON)

The ``{u:<user_id>}`` hash tag puts all of one user's keys in one Redis
Cluster slot, so a user's read is one pipeline to one node and the per-user
part of a write is a single-slot script. A user id containing ``}`` shortens
its hash tag, which can only make two users share a slot, never two keys
collide: every suffix is a fixed word without ``}``.
"""

from __future__ import annotations

from dataclasses import dataclass

LAYOUT_VERSION = "v1"


@dataclass(frozen=True, slots=True)
class UserKeys:
    pos: str
    dis: str
    seen: str
    log: str
    tag: str  # "P:{u:<id>}" - prefix of the user's idempotency keys

    def idem(self, event_id: str) -> str:
        return f"{self.tag}:e:{event_id}"


class Keys:
    """Key builder for one prefix (tests use a unique prefix each)."""

    def __init__(self, prefix: str) -> None:
        self.base = f"{prefix}:{LAYOUT_VERSION}"
        self.stream = f"{self.base}:{{log}}:events"

    def user(self, user_id: str) -> UserKeys:
        tag = f"{self.base}:{{u:{user_id}}}"
        return UserKeys(
            pos=f"{tag}:pos", dis=f"{tag}:dis", seen=f"{tag}:seen", log=f"{tag}:log", tag=tag
        )

    def log_guard(self, user_id: str, event_id: str) -> str:
        """Cluster mode: marks an event as logged, in the stream's slot (length-prefixed: unambiguous)."""
        return f"{self.base}:{{log}}:g:{len(user_id)}:{user_id}:{event_id}"

    def item_meta(self, item_id: str) -> str:
        return f"{self.base}:{{i:{item_id}}}:meta"

    def pattern(self) -> str:
        """SCAN pattern matching every key of this prefix (for tests and tooling only)."""
        return f"{self.base}:*"
