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

Dislike holdout (``split.dislike_holdout = last_fraction:F``)
-------------------------------------------------------------
Leave-last-out judges one positive per user and only the dislikes after it,
too few to tell whether a model ranks what a user likes above what they
dislike. So, for timestamped sources with dislikes, :func:`apply_dislike_holdout`
also holds out the **dislikes** among the last ``F`` of the events of a share
of the users (``split.dislike_holdout_users``, by a stable hash of the user
id): the last ``ceil(F * n)`` of their ``n`` positives and dislikes, the cut
moved back to the start of its timestamp. Those dislikes that leave-last-out
made TRAIN become ``HOLDOUT``: never a training row (no NTR term), never in a
training row's input. The same hash makes a share of these users
(``split.dislike_valid_share``) *validation* users of the dislike metrics, the
rest *test* users: a test user's answers are their leave-last-out TEST positive
and their HOLDOUT and TEST dislikes; a validation user's, the VALID positive
and the HOLDOUT and VALID dislikes. So validation never reads a test answer,
and none of the answers was ever trained on. See
:func:`trainer.data.examples.build_judged_set`.

Why only the dislikes, when the whole last fraction would give more positive
answers: holding a user's last positives out of training costs the model what
it most needs to rank their next item. On ml-100k (recall@20, one seed), the
whole last fifth of every user held out took the leave-last-out recall@20 from
0.227 to 0.169 (half of the users held out: 0.189), and on the pipeline's
two-snapshot synthetic example from 0.207 to 0.007, because recently added
items then hardly train at all. Held-out dislikes cost only their NTR rows.
The positives after the cut still train, as leave-last-out allows; they are
not answers, and the judged input contains them.

The holdout depends on the user id and the event times only, never on the
labels, so a later snapshot of the same log holds out, per user, a suffix in
time of what an earlier one held out plus newer events (``ceil(F * n)`` grows
by at most the number of new events): a version trained on the earlier
snapshot with the same holdout never trained on the later answers, unless
events arrived out of time order.

Given split (lightgcn)
----------------------
The files say it: ``train.txt`` -> TRAIN, ``valid.txt`` -> VALID,
``test.txt`` -> TEST. There is no time (``ts`` is NaN, ``timestamped=False``).
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from trainer.data.dataset import (
    DISLIKE,
    HOLDOUT,
    POSITIVE,
    TEST,
    TRAIN,
    VALID,
    Dataset,
    DislikeHoldout,
)
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


def parse_dislike_holdout(spec: str) -> float | None:
    """``"none"`` -> None; ``"last_fraction:F"`` -> F, which must be in (0, 1).

    Raises:
      ValueError: any other value.
    """
    text = str(spec).strip()
    if text == "none":
        return None
    kind, _, value = text.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = math.nan
    if kind != "last_fraction" or not 0.0 < fraction < 1.0:
        raise ValueError(
            f"split.dislike_holdout must be 'none' or 'last_fraction:F' with 0 < F < 1, got {spec!r}"
        )
    return fraction


#: Salt of the user hash, so the validation/test assignment is its own draw.
_GROUP_SALT = b"twotower-dislike-holdout:"


def holdout_groups(
    user_ids: np.ndarray, valid_share: float, users_share: float = 1.0
) -> np.ndarray:
    """int8 [U]: ``VALID``, ``TEST`` or ``TRAIN`` (not held out) per user id, from a stable hash of the id.

    The same id gets the same group in every snapshot, process and Python
    version (CRC-32 of the salted UTF-8 id, not ``hash()``), whatever the other
    users are.
    """
    h = np.fromiter(
        (zlib.crc32(_GROUP_SALT + str(x).encode()) for x in np.asarray(user_ids)),
        dtype=np.float64,
        count=len(user_ids),
    )
    h = h / 2.0**32
    return np.where(
        h < valid_share * users_share, VALID, np.where(h < users_share, TEST, TRAIN)
    ).astype(np.int8)


def apply_dislike_holdout(
    ds: Dataset, spec: str, valid_share: float, users_share: float = 1.0
) -> Dataset:
    """``ds`` with the dislikes of each user's last fraction of events held out (module docstring).

    A no-op (``dislike_holdout`` None) for ``spec == "none"``, untimed sources and
    sources without dislikes (the metrics it serves cannot be measured there, so
    training keeps every row). Applying the same holdout twice returns ``ds``.

    Returns:
      a new Dataset (``split`` with ``HOLDOUT`` events, ``dislike_holdout`` set);
      ``ds`` is untouched.
    Raises:
      ValueError: a bad ``spec``, or ``ds`` already holds out something else.
    """
    fraction = parse_dislike_holdout(spec)
    if ds.dislike_holdout is not None:
        held = ds.dislike_holdout
        if (held.fraction, held.valid_share, held.users_share) == (
            fraction,
            valid_share,
            users_share,
        ):
            return ds
        raise ValueError(f"{ds.source}: a dislike holdout ({held.spec}) is already applied")
    if fraction is None or not ds.timestamped or not (ds.labels == DISLIKE).any():
        return ds
    n = len(ds.users)
    starts = np.searchsorted(ds.users, np.arange(ds.num_users + 1))
    count = np.diff(starts)
    held_n = np.ceil(fraction * count - 1e-9).astype(np.int64)
    first = starts[:-1] + count - held_n
    has = count > 0
    # Back to the first event of that second: nothing held out shares a second with an input.
    first[has] = tie_starts(ds.users, ds.ts)[np.minimum(first[has], n - 1)]
    first[~has] = starts[:-1][~has]
    group = holdout_groups(ds.user_ids, valid_share, users_share)
    first[group == TRAIN] = starts[1:][group == TRAIN]  # not held out: nothing from the end
    split = ds.split.copy()
    after = np.arange(n) >= first[ds.users]
    split[after & (split == TRAIN) & (ds.labels == DISLIKE)] = HOLDOUT
    info = DislikeHoldout(
        spec=str(spec),
        fraction=float(fraction),
        valid_share=float(valid_share),
        users_share=float(users_share),
        group=group,
        first=first.astype(np.int64),
    )
    return dataclasses.replace(ds, split=split, dislike_holdout=info)


def train_and_valid(ds: Dataset) -> Dataset:
    """``ds`` with its validation events made training events (``train.refit``)."""
    return dataclasses.replace(
        ds, split=np.where(ds.split == VALID, TRAIN, ds.split).astype(ds.split.dtype)
    )


__all__ = [
    "DISLIKE",
    "apply_dislike_holdout",
    "assemble",
    "attach_feature",
    "group_starts",
    "holdout_groups",
    "parse_dislike_holdout",
    "temporal_split",
    "tie_starts",
    "train_and_valid",
]
