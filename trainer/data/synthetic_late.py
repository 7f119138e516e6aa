"""Late items of the synthetic world (``late_items``): cold-start items with a few events.

:func:`late_items` rewrites the generated events so that the late items are added
at ``late_from`` with few events (the world: :mod:`trainer.data.synthetic`):

1. Every event drawn on a late item goes to an item of the same category and
   cluster that is not late, by popularity (the user's items stay distinct;
   with no such item, the event is dropped).
2. Each late item then takes k ~ U{1..max_events} events of the window
   (``ts >= late_from``): a share r ~ Beta(1/2, 1/2) of them (its early
   audience is rarely mixed) are dislikes by users averse to its cluster
   (taken from their window dislikes of that cluster), the rest positives
   of its category by users who are not (taken from their window positives).
   Fewer when the window has too few such events.
"""

from __future__ import annotations

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE
from trainer.data.sampling import keyed_sampler
from trainer.data.split import group_starts


def late_items(
    users: np.ndarray,
    items: np.ndarray,
    labels: np.ndarray,
    ts: np.ndarray,
    late: np.ndarray,
    late_from: float,
    max_events: int,
    world: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite the events so that the ``late`` items are added at ``late_from`` with few events.

    Args:
      world: (pop [N], category [N], cluster [N], is_averse [U, C]).
    Returns:
      (new items, bool mask of the events kept).
    """
    pop, category, cluster, is_averse = world
    n = len(pop)
    is_late = np.zeros(n, bool)
    is_late[late] = True
    segment = category.astype(np.int64) * is_averse.shape[1] + cluster
    items, keep = _off_late_items(users, items, is_late, pop, segment, rng)
    return _onto_late_items(users, items, keep, labels, ts, late, late_from, max_events, world, rng)


def _off_late_items(
    users: np.ndarray,
    items: np.ndarray,
    is_late: np.ndarray,
    pop: np.ndarray,
    segment: np.ndarray,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 (module docstring): (items, kept events) with no event on a late item."""
    n = len(pop)
    old = np.flatnonzero(~is_late)
    sample, has = keyed_sampler(pop[old], segment[old], old)
    items = items.copy()
    keep = np.ones(len(items), bool)
    rows = np.flatnonzero(is_late[items])
    seg = segment[items[rows]]
    ok = has(seg)
    keep[rows[~ok]] = False
    rows, seg = rows[ok], seg[ok]
    for _ in range(8):
        if not len(rows):
            break
        items[rows] = sample(seg, rng)
        key = users.astype(np.int64) * n + items
        uniq, counts = np.unique(key[keep], return_counts=True)
        repeated = counts[np.searchsorted(uniq, key[rows])] > 1
        rows, seg = rows[repeated], seg[repeated]
    keep[rows] = False  # still repeating one of the user's items
    return items, keep


def _onto_late_items(
    users: np.ndarray,
    items: np.ndarray,
    keep: np.ndarray,
    labels: np.ndarray,
    ts: np.ndarray,
    late: np.ndarray,
    late_from: float,
    max_events: int,
    world: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 (module docstring): each late item takes a few of the window's events."""
    pop, category, cluster, is_averse = world
    n = len(pop)
    k = rng.integers(1, max_events + 1, len(late))
    n_hate = rng.binomial(k, rng.beta(0.5, 0.5, len(late)))
    window = keep & (ts >= late_from)
    taken = np.full(len(items), -1, np.int64)  # late item each event goes to
    for pool, key_of, wanted in (
        (window & (labels == DISLIKE), cluster, n_hate),
        (window & (labels == POSITIVE), category, k - n_hate),
    ):
        rows = np.flatnonzero(pool)
        rows = rows[np.lexsort((rng.random(len(rows)), key_of[items[rows]]))]
        rank = np.arange(len(rows)) - group_starts(key_of[items[rows]])
        by_key = np.lexsort((np.arange(len(late)), key_of[late]))
        lkey = key_of[late][by_key]
        offset = np.cumsum(wanted[by_key]) - wanted[by_key]
        offset -= offset[group_starts(lkey)]  # exclusive cumsum within each key
        span = len(rows) + 1
        at = (
            np.searchsorted(lkey * span + offset, key_of[items[rows]] * span + rank, side="right")
            - 1
        )
        at_ok = at >= 0
        j = by_key[np.maximum(at, 0)]
        hit = (
            at_ok
            & (key_of[late[j]] == key_of[items[rows]])
            & (rank < offset[np.maximum(at, 0)] + wanted[j])
        )
        taken[rows[hit]] = late[j[hit]]
    moved = np.flatnonzero(taken >= 0)
    # Positives only from users who are not averse to the late item's cluster, dislikes
    # only from users who are; one event per (user, late item).
    fits = is_averse[users[moved], cluster[taken[moved]]] == (labels[moved] == DISLIKE)
    moved = moved[fits]
    _, first = np.unique(users[moved].astype(np.int64) * n + taken[moved], return_index=True)
    moved = moved[first]
    items[moved] = taken[moved]
    return items, keep
