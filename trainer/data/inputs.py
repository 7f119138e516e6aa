"""A row's inputs: the token windows of what the user did before it.

Timestamped sources: :class:`Timeline` gives, for any events, the user's last H
positives and last D dislikes strictly before each (events sharing a timestamp
never see each other), right-aligned, optionally hiding some events (the held-out
dislikes). Untimed sources: :func:`sample_other_items` (a training row's history,
a sample of the user's other TRAIN items) and :func:`untimed_inputs` (an evaluated
user's TRAIN items). The rules they serve: :mod:`trainer.data.examples`.
"""

from __future__ import annotations

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset
from trainer.data.split import group_starts, tie_starts

#: rows per chunk of window gathering: bounds memory at ~CHUNK * H * 8 bytes.
CHUNK = 65536


def _windows(
    end: np.ndarray, begin: np.ndarray, positions: np.ndarray, items: np.ndarray, length: int
) -> np.ndarray:
    """int32 [n, length]: tokens of ``items[positions[end - length : end]]``, right-aligned.

    ``positions`` is a global list (events of one kind, in sorted order); row r
    takes its entries ``begin[r] <= j < end[r]``, the last ``length`` of them.
    """
    n = len(end)
    out = np.zeros((n, length), dtype=np.int32)
    if length == 0 or n == 0 or len(positions) == 0:
        return out
    tokens = items[positions].astype(np.int32) + 1
    cols = np.arange(length, dtype=np.int64)
    for lo in range(0, n, CHUNK):
        hi = min(lo + CHUNK, n)
        j = end[lo:hi, None] - length + cols
        ok = j >= begin[lo:hi, None]
        out[lo:hi] = np.where(ok, tokens[np.where(ok, j, 0)], 0)
    return out


class Timeline:
    """Per-event lookups for "what did this user do strictly before this event"."""

    def __init__(self, ds: Dataset, hide: np.ndarray | None = None):
        """``hide``: bool [E], events never shown as an input (held-out dislikes)."""
        self.ds = ds
        self.tie = tie_starts(ds.users, ds.ts)
        self.user_start = group_starts(ds.users)
        shown = np.ones(len(ds.users), dtype=bool) if hide is None else ~hide
        pos, dis = (ds.labels == POSITIVE) & shown, (ds.labels == DISLIKE) & shown
        self.pos = np.flatnonzero(pos)
        self.dis = np.flatnonzero(dis)
        # c[i] = shown events of the kind before position i.
        self.cpos = np.concatenate([[0], np.cumsum(pos)])
        self.cdis = np.concatenate([[0], np.cumsum(dis)])

    def inputs(self, rows: np.ndarray, H: int, D: int) -> tuple[np.ndarray, np.ndarray]:
        """(history [n, H], dislikes [n, D]) tokens strictly before the events ``rows``."""
        tie, start = self.tie[rows], self.user_start[rows]
        history = _windows(self.cpos[tie], self.cpos[start], self.pos, self.ds.items, H)
        dislikes = _windows(self.cdis[tie], self.cdis[start], self.dis, self.ds.items, D)
        return history, dislikes


def sample_other_items(
    ds: Dataset, rows: np.ndarray, H: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``rows`` (one user's TRAIN positives, grouped by user): H tokens of the
    user's other TRAIN positives, a uniform sample in random order, right-aligned.

    Returns (rows in the shuffled order used, history int32 [n, H]).
    """
    users = ds.users[rows]
    shuffled = rows[np.lexsort((rng.random(len(rows)), users))]
    u = ds.users[shuffled]
    begin = group_starts(u)
    size = np.bincount(u, minlength=ds.num_users)[u]
    # For a uniformly shuffled block, the L entries after the target (cyclically)
    # are a uniform L-subset of the others, in random order, and never the target.
    take = np.minimum(H, size - 1)
    tokens = ds.items[shuffled].astype(np.int32) + 1
    out = np.zeros((len(rows), H), dtype=np.int32)
    cols = np.arange(H, dtype=np.int64)
    for lo in range(0, len(rows), CHUNK):
        hi = min(lo + CHUNK, len(rows))
        k = cols - (H - take[lo:hi, None])
        ok = k >= 0
        pos = np.arange(lo, hi)[:, None]
        src = begin[lo:hi, None] + (pos - begin[lo:hi, None] + 1 + k) % size[lo:hi, None]
        out[lo:hi] = np.where(ok, tokens[np.where(ok, src, 0)], 0)
    return shuffled, out


def row_of(users: np.ndarray, eval_users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is the user evaluated [len(users)], its row in ``eval_users`` (sorted))."""
    at = np.clip(np.searchsorted(eval_users, users), 0, max(len(eval_users) - 1, 0))
    hit = (eval_users[at] == users) if len(eval_users) else np.zeros(len(users), bool)
    return hit, at


def untimed_inputs(
    ds: Dataset, eval_users: np.ndarray, H: int, rng: np.random.Generator
) -> np.ndarray:
    """int32 [u, H]: each evaluated user's TRAIN items in index order, right-aligned.

    All of them when the user has at most H; otherwise a uniform sample of H
    (drawn with ``rng``), still in index order.
    """
    u = len(eval_users)
    history = np.zeros((u, H), dtype=np.int32)
    train = np.flatnonzero((ds.labels == POSITIVE) & (ds.split == TRAIN))
    shuffled = train[np.lexsort((rng.random(len(train)), ds.users[train]))]
    rank = np.arange(len(shuffled)) - group_starts(ds.users[shuffled])
    keep = shuffled[rank < H]
    keep = keep[np.lexsort((ds.items[keep], ds.users[keep]))]
    hit, row = row_of(ds.users[keep], eval_users)
    keep, row = keep[hit], row[hit]
    if len(keep) == 0:
        return history
    counts = np.bincount(row, minlength=u)
    col = np.arange(len(keep)) - group_starts(row)
    history[row, H - counts[row] + col] = ds.items[keep] + 1
    return history
