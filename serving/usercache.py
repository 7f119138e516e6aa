"""Last-known dislikes per user, kept by each serving process for degraded mode.

Invariant 1 of docs/CONTRACT.md (a disliked item is never recommended once the dislike is
acknowledged) must hold while the store is down or slow. The store is the
source of truth; this cache remembers what the process last learned from it
(every successful state read) and what it wrote itself (every ``/v1/events``
dislike), and :func:`serving.service.recommend` merges it into every answer.

Dislikes are never taken back by an event, so merging is a union: a read
that started before a concurrent write cannot erase the written dislike.
An entry is *complete* once a store read has filled it; an entry made only of
this process's own writes is partial (older dislikes may exist in the store).
Bounded by users and by total dislikes, least recently used first out.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class CachedDislikes:
    """One user's known dislikes; ``complete`` once a store read contributed."""

    items: set[str] = field(default_factory=set)
    complete: bool = False


class DislikeCache:
    """LRU of ``user_id -> CachedDislikes``.

    Args:
      max_users: most users kept (0 disables the cache: every lookup misses).
      max_items: most dislikes kept over all users; a single user with more is
        not cached (logged), since evicting everyone else for them helps nobody.
    """

    def __init__(self, max_users: int, max_items: int) -> None:
        self.max_users = max_users
        self.max_items = max_items
        self._entries: OrderedDict[str, CachedDislikes] = OrderedDict()
        self._items = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def items(self) -> int:
        """Dislikes held over all users."""
        return self._items

    def get(self, user_id: str) -> CachedDislikes | None:
        """The user's entry (marked recently used), or None."""
        entry = self._entries.get(user_id)
        if entry is not None:
            self._entries.move_to_end(user_id)
        return entry

    def learn(self, user_id: str, items: Iterable[str], *, complete: bool) -> None:
        """Add ``items`` to the user's dislikes; ``complete`` when they come from a store read."""
        if self.max_users <= 0:
            return
        entry = self._entries.get(user_id)
        if entry is None:
            entry = self._entries[user_id] = CachedDislikes()
        else:
            self._entries.move_to_end(user_id)
        before = len(entry.items)
        entry.items.update(items)
        entry.complete = entry.complete or complete
        self._items += len(entry.items) - before
        if len(entry.items) > self.max_items:
            log.warning(
                "user %r has %d dislikes, more than the whole dislike cache holds (%d): not cached",
                user_id,
                len(entry.items),
                self.max_items,
            )
            self._drop(user_id)
            return
        while len(self._entries) > self.max_users or self._items > self.max_items:
            oldest = next(iter(self._entries))
            self._drop(oldest)
            self.evictions += 1

    def _drop(self, user_id: str) -> None:
        entry = self._entries.pop(user_id)
        self._items -= len(entry.items)
