"""Assembling a :class:`Dataset` from raw events, and the train/valid/test split.

Temporal leave-last-out (timestamped sources: synthetic, movielens, events)
--------------------------------------------------------------------------
Each user's events are ordered by ``(ts, original order)`` -- the original
order is the order the reader produced them in (file order), so equal
timestamps keep a stable, reproducible order. Then, per user:

* fewer than 3 positives: every event is TRAIN (too short to hold anything out);
* otherwise, with ``v`` = the user's second-to-last positive and ``t`` = the
  last positive (in that order):

  - every event before ``v`` is TRAIN (positives and dislikes);
  - ``v`` is VALID, and so are the dislikes between ``v`` and ``t``;
  - ``t`` is TEST, and so are the dislikes after ``t``.

So every non-TRAIN dislike comes after the user's last TRAIN event; these are
the *held-out dislikes* of the dislike metrics (see
:func:`trainer.data.examples.build_eval_set` for which of them each split
uses). No positive other than ``v`` and ``t`` can be non-TRAIN, because ``v``
and ``t`` are the last two positives.

Given split (lightgcn)
----------------------
The files say it: ``train.txt`` -> TRAIN, ``valid.txt`` -> VALID,
``test.txt`` -> TEST. There is no time (``ts`` is NaN, ``timestamped=False``).
"""

from __future__ import annotations

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TEST, TRAIN, VALID, Dataset
from trainer.data.errors import DataError


def group_starts(keys: np.ndarray) -> np.ndarray:
    """int64 [E]: for each position of a sorted key array, the first position with its key."""
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = keys[1:] != keys[:-1]
    starts = np.flatnonzero(is_start)
    return starts[np.cumsum(is_start) - 1]


def tie_starts(users: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """int64 [E]: first position of each event's (user, ts) run in a sorted event array.

    An event at ``tie_starts[i]`` or later with the same user has the same
    timestamp as event ``i``; everything of that user before it is strictly earlier.
    """
    n = len(users)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    is_start = np.ones(n, dtype=bool)
    is_start[1:] = (users[1:] != users[:-1]) | (ts[1:] != ts[:-1])
    starts = np.flatnonzero(is_start)
    return starts[np.cumsum(is_start) - 1]


def temporal_split(users: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """int8 [E] TRAIN/VALID/TEST for events already sorted by (user, ts, original order).

    Args:
      users: int [E] user index per event, grouped (non-decreasing).
      labels: int8 [E] ``POSITIVE`` / ``DISLIKE``.
    Returns:
      the split per event, by the rule in this module's docstring.
    """
    n = len(users)
    split = np.full(n, TRAIN, dtype=np.int8)
    if n == 0:
        return split
    num_users = int(users.max()) + 1
    pos = labels == POSITIVE
    # Rank of each positive counted from the user's end: 1 = last positive.
    pos_idx = np.flatnonzero(pos)
    pos_users = users[pos_idx]
    n_pos = np.bincount(pos_users, minlength=num_users)
    first_pos = np.concatenate([[0], np.cumsum(n_pos)[:-1]])
    rank_in_user = np.arange(len(pos_idx)) - first_pos[pos_users]
    from_end = n_pos[pos_users] - rank_in_user
    eligible = n_pos >= 3
    last_i = np.full(num_users, n, dtype=np.int64)  # position of the TEST positive
    valid_i = np.full(num_users, n, dtype=np.int64)  # position of the VALID positive
    sel = eligible[pos_users]
    last_i[pos_users[sel & (from_end == 1)]] = pos_idx[sel & (from_end == 1)]
    valid_i[pos_users[sel & (from_end == 2)]] = pos_idx[sel & (from_end == 2)]
    at = np.arange(n)
    split[at >= valid_i[users]] = VALID
    split[at >= last_i[users]] = TEST
    return split


def assemble(
    *,
    source: str,
    kind: str,
    user_raw: np.ndarray,
    item_raw: np.ndarray,
    labels: np.ndarray,
    ts: np.ndarray | None,
    split: np.ndarray | None = None,
    catalog: np.ndarray | None = None,
    user_vocab: np.ndarray | None = None,
    item_vocab: np.ndarray | None = None,
    skipped_lines: int = 0,
    neutral: int = 0,
    numeric_ids: bool = False,
) -> Dataset:
    """Build a sorted, split :class:`Dataset` from per-event arrays.

    Args:
      source, kind: recorded on the Dataset.
      user_raw, item_raw: [E] original ids, or indices into ``user_vocab`` /
        ``item_vocab`` when those are given.
      labels: int8 [E] ``POSITIVE`` / ``DISLIKE``.
      ts: float64 [E] seconds since epoch, or None for an untimed source.
      split: int8 [E] a given split (lightgcn); None = temporal leave-last-out.
      catalog: extra item ids that belong to the catalog without events here.
      user_vocab, item_vocab: [U] / [N] the id order to use (indices given).
        Without them the vocabularies are the sorted distinct ids.
      skipped_lines, neutral: reader counts, recorded on the Dataset.
      numeric_ids: ids are integers; order vocabularies by value ("9" < "10").
    Returns:
      the Dataset, events sorted by (user, ts, original order), no item features
      (see :func:`attach_feature`).
    """
    n = len(labels)
    if not (len(user_raw) == len(item_raw) == n):
        raise ValueError("user_raw, item_raw and labels must have the same length")
    if n == 0:
        raise DataError(f"{source}: no positive or dislike events to train on")
    if user_vocab is not None:
        users = np.asarray(user_raw, dtype=np.int64)
    else:
        user_vocab, users = _vocab(user_raw, numeric_ids)
    if item_vocab is not None:
        items = np.asarray(item_raw, dtype=np.int64)
    else:
        all_items = item_raw if catalog is None else np.concatenate([item_raw, catalog])
        item_vocab, all_idx = _vocab(all_items, numeric_ids)
        items = all_idx[:n]
    labels = np.asarray(labels, dtype=np.int8)
    timestamped = ts is not None
    ts_arr = np.asarray(ts, dtype=np.float64) if ts is not None else np.full(n, np.nan)
    if timestamped:
        order = np.lexsort((np.arange(n), ts_arr, users))
    else:
        order = np.lexsort((np.arange(n), users))
    users, items, labels, ts_arr = users[order], items[order], labels[order], ts_arr[order]
    if split is None:
        split_arr = temporal_split(users, labels)
    else:
        split_arr = np.asarray(split, dtype=np.int8)[order]
    return Dataset(
        source=source,
        kind=kind,
        user_ids=np.asarray(user_vocab).astype(str),
        item_ids=np.asarray(item_vocab).astype(str),
        users=users.astype(np.int32),
        items=items.astype(np.int32),
        labels=labels,
        ts=ts_arr,
        split=split_arr,
        timestamped=timestamped,
        skipped_lines=int(skipped_lines),
        neutral=int(neutral),
    )


def _vocab(raw: np.ndarray, numeric: bool) -> tuple[np.ndarray, np.ndarray]:
    if numeric:
        values, inverse = np.unique(np.asarray(raw, dtype=np.int64), return_inverse=True)
        return values.astype(str), inverse
    return np.unique(np.asarray(raw).astype(str), return_inverse=True)


def attach_feature(ds: Dataset, name: str, ids: np.ndarray, values: np.ndarray, size: int) -> None:
    """Set ``ds.item_features[name]`` from (item id, value) pairs; items without one get 0.

    Args:
      ids: [M] item ids (compared as strings with ``ds.item_ids``).
      values: int [M] categorical values in 1..size-1 (0 is reserved for unknown).
      size: vocabulary size including 0.
    """
    ids = np.asarray(ids).astype(str)
    out = np.zeros(ds.num_items, dtype=np.int32)
    if len(ids):
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        at = np.clip(np.searchsorted(sorted_ids, ds.item_ids), 0, len(ids) - 1)
        found = sorted_ids[at] == ds.item_ids
        out[found] = np.asarray(values)[order][at[found]]
    ds.item_features[name] = out
    ds.item_feature_sizes[name] = int(size)


__all__ = ["DISLIKE", "assemble", "attach_feature", "group_starts", "temporal_split", "tie_starts"]
