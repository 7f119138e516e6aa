"""Training rows and evaluation sets from a split :class:`Dataset`.

Histories are token matrices (item index + 1, 0 = padding), right-aligned:
the most recent item is in the last column; :mod:`trainer.data.inputs` builds them.

Timestamped sources (synthetic, movielens, events)
--------------------------------------------------
A training row is a TRAIN event (positive -> softmax target, dislike -> NTR
target) at time t. Its inputs are the user's last H positives and last D
dislikes with time **strictly before t**, oldest to newest, held-out dislikes
(``HOLDOUT``) left out. Events sharing a
timestamp never see each other (their order within a second is arbitrary,
so showing one to the other would leak the future). Every event strictly
before a TRAIN event is itself TRAIN (see :mod:`trainer.data.split`).

Evaluation of a split (``"valid"`` or ``"test"``) uses the same rule at the
held-out positive's time t: the input is every positive (TRAIN, and VALID for
``"test"``) and every dislike strictly before t; the target is the held-out
positive. The held-out dislikes (the answers of ``dislike_rate``) are the
user's non-TRAIN dislikes (all after their last TRAIN event) that are not part
of the input: all of them for ``"valid"``, those not before t for ``"test"`` --
an item is never both an input and an answer.

The mask (items removed from the user's ranking) is every item of the user's
TRAIN events -- positives *and* dislikes -- plus, for ``"test"``, every VALID
event that is not a held-out dislike. Serving never returns an item the user
disliked nor one they already have, so the offline top-K does not spend slots
on them either. The held-out dislikes themselves stay unmasked: they are what
``dislike_rate`` looks for.

Untimed sources (lightgcn)
--------------------------
Items have no order. A training row is a TRAIN positive; its history is a
random sample (without replacement, in random order) of up to H of the user's
*other* TRAIN items -- never the target itself -- resampled every epoch from
``(seed, epoch)``. At evaluation the input is the user's TRAIN items, all of
them (in item-index order) up to the input width H; only a user with more
than H train items gets a seeded sample of H (:func:`capped_users` counts
them, and the manifest records it). The targets are the split's items, the
mask is TRAIN (+ VALID for ``"test"``) items. There are no dislikes.

In both cases a target or held-out dislike whose item is masked for that user
(a repeat of an item they had, or a positive of an item they disliked before)
is dropped: it can never be ranked, as serving excludes seen and disliked items.

With the dislike holdout (:func:`trainer.data.split.apply_dislike_holdout`),
a user's held-out dislikes (``HOLDOUT``, in their last fraction of events) are
never training rows and never part of a training row's input, although later
TRAIN events exist; at leave-last-out evaluation they are inputs and masked
like TRAIN events (they are the user's real history at serving time).

Judged sets (the dislike holdout)
---------------------------------
:func:`build_judged_set` is what ``like_dislike_auc`` and ``dislike_share@20``
score, for the validation (or test) users of the dislike holdout: the
leave-last-out evaluation of the same split with the held-out dislikes moved
from the input to the answers. The positive answer is the split's held-out
positive; the dislike answers are the user's ``HOLDOUT`` dislikes plus the
split's own held-out dislikes (VALID dislikes for validation, TEST dislikes for
test), none of them ever trained on; the input is every positive and every
other dislike strictly before the positive; the mask is the items of the
user's TRAIN (test: and VALID) events. An answer on a masked item, or a
dislike of the positive's item, is dropped; only users left with a positive
and a dislike answer are judged. The answers stay unmasked.
"""

from __future__ import annotations

import numpy as np

from trainer.data.dataset import (
    DISLIKE,
    HOLDOUT,
    POSITIVE,
    TEST,
    TRAIN,
    VALID,
    Dataset,
    EvalSet,
    Examples,
)
from trainer.data.inputs import Timeline, row_of, sample_other_items, untimed_inputs


def build_train_examples(
    ds: Dataset,
    history_length: int,
    dislike_length: int,
    *,
    seed: int = 0,
    epoch: int = 0,
    dislike_weight: float = 1.0,
    ntr_state: str = "before",
) -> Examples:
    """One row per TRAIN event (rules in the module docstring).

    Args:
      ds: a split Dataset.
      history_length: H, positives per row.
      dislike_length: D, dislikes per row.
      seed, epoch: the history sample of untimed sources (ignored when timestamped).
      dislike_weight: w, the weight of every dislike row in the NTR term
        (``loss.dislike_weight``); positive rows weigh 1.
      ntr_state: ``"before"``: a dislike row's inputs are the user's state strictly
        before the dislike, like every row's; ``"after"``: its dislike input also
        holds the row's own item as the most recent dislike (the window shifts
        left by one), so the NTR term scores the disliked item against the state
        right after the user rejected it (``loss.ntr_state``). Positive rows are
        the same either way.
    Returns:
      Examples with history int32 [n, H], dislikes int32 [n, D], item int32 [n]
      (tokens), is_positive float32 [n] and weight float32 [n] (1 on positive
      rows, ``dislike_weight`` on dislike rows).
    """
    if not np.isfinite(dislike_weight) or dislike_weight < 0:
        raise ValueError(f"dislike_weight must be a finite number >= 0, got {dislike_weight}")
    if ntr_state not in ("before", "after"):
        raise ValueError(f"ntr_state must be 'before' or 'after', got {ntr_state!r}")
    H, D = int(history_length), int(dislike_length)
    if ds.timestamped:
        rows = np.flatnonzero(ds.split == TRAIN)
        # A held-out dislike is never a training row, nor in one's input.
        history, dislikes = Timeline(ds, hide=ds.split == HOLDOUT).inputs(rows, H, D)
    else:
        rows = np.flatnonzero((ds.split == TRAIN) & (ds.labels == POSITIVE))
        rows, history = sample_other_items(ds, rows, H, np.random.default_rng([seed, epoch]))
        dislikes = np.zeros((len(rows), D), dtype=np.int32)
    positive = ds.labels[rows] == POSITIVE
    item = (ds.items[rows] + 1).astype(np.int32)
    if ntr_state == "after" and D > 0:
        own = ~positive
        dislikes[own] = np.concatenate([dislikes[own, 1:], item[own, None]], axis=1)
    return Examples(
        history=history,
        dislikes=dislikes,
        item=item,
        is_positive=positive.astype(np.float32),
        weight=np.where(positive, 1.0, dislike_weight).astype(np.float32),
    )


def _csr(rows: np.ndarray, items: np.ndarray, num_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(ptr int64 [num_rows + 1], items int32) of (row, item) pairs, deduplicated, sorted per row."""
    if len(rows):
        key = np.unique(rows.astype(np.int64) * (int(items.max()) + 1) + items)
        rows, items = key // (int(items.max()) + 1), key % (int(items.max()) + 1)
    counts = np.bincount(rows, minlength=num_rows) if len(rows) else np.zeros(num_rows, np.int64)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), items.astype(np.int32)


def _eval_set(
    ds: Dataset,
    eval_users: np.ndarray,
    history: np.ndarray,
    dislikes: np.ndarray,
    events: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> EvalSet:
    """An EvalSet of ``eval_users`` from event indices (targets, mask, dislike answers)."""

    def csr_of(idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        hit, row = row_of(ds.users[idx], eval_users)
        return _csr(row[hit], ds.items[idx][hit].astype(np.int64), len(eval_users))

    (tp, ti), (mp, mi), (dp, di) = (csr_of(idx) for idx in events)
    return EvalSet(eval_users.astype(np.int32), history, dislikes, tp, ti, mp, mi, dp, di)


def build_eval_set(
    ds: Dataset, which: str, history_length: int, dislike_length: int, *, seed: int = 0
) -> EvalSet:
    """Inputs and ground truth of the all-ranking protocol on ``which`` split.

    Args:
      ds: a split Dataset.
      which: ``"valid"`` or ``"test"``.
      history_length, dislike_length: H and D.
      seed: the history sample of untimed users with more than H train items.
    Returns:
      an EvalSet over the users with at least one target (sorted by user index);
      masks and held-out dislikes as in the module docstring.
    """
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    H, D = int(history_length), int(dislike_length)
    held = VALID if which == "valid" else TEST
    known = (TRAIN, HOLDOUT) if which == "valid" else (TRAIN, HOLDOUT, VALID)
    pos = ds.labels == POSITIVE
    keys = ds.users.astype(np.int64) * max(ds.num_items, 1) + ds.items
    target_idx = np.flatnonzero(pos & (ds.split == held))

    if ds.timestamped:
        # One held-out positive per user and split (see trainer.data.split): its
        # event is the input's cut-off.
        first = target_idx[np.unique(ds.users[target_idx], return_index=True)[1]]
        dis = np.flatnonzero((ds.labels == DISLIKE) & np.isin(ds.split, (VALID, TEST)))
        if which == "test":
            # Not an input: at or after the target's time.
            cut = np.full(ds.num_users, np.inf)
            cut[ds.users[first]] = ds.ts[first]
            dis = dis[ds.ts[dis] >= cut[ds.users[dis]]]
    else:
        dis = np.zeros(0, dtype=np.int64)

    # Mask: every known-split event of the user (positives and dislikes) except the
    # held-out dislikes, which are answers. Targets and held-out dislikes of a masked
    # item can never be ranked: drop them.
    mask_sel = np.isin(ds.split, known)
    mask_sel[dis] = False
    mask_idx = np.flatnonzero(mask_sel)
    mask_keys = np.unique(keys[mask_idx])
    target_idx = target_idx[~np.isin(keys[target_idx], mask_keys)]
    dis = dis[~np.isin(keys[dis], mask_keys)]
    eval_users = np.unique(ds.users[target_idx])
    u = len(eval_users)

    if ds.timestamped:
        first = target_idx[np.unique(ds.users[target_idx], return_index=True)[1]]
        history, dislikes = Timeline(ds).inputs(first, H, D)
    else:
        history = untimed_inputs(ds, eval_users, H, np.random.default_rng([seed, held]))
        dislikes = np.zeros((u, D), dtype=np.int32)
    return _eval_set(ds, eval_users, history, dislikes, (target_idx, mask_idx, dis))


def empty_eval_set(history_length: int, dislike_length: int) -> EvalSet:
    """An EvalSet of no users (inputs of width H and D)."""
    ptr = np.zeros(1, dtype=np.int64)
    none = np.zeros(0, dtype=np.int32)
    return EvalSet(
        none,
        np.zeros((0, int(history_length)), np.int32),
        np.zeros((0, int(dislike_length)), np.int32),
        ptr,
        none,
        ptr,
        none,
        ptr,
        none,
    )


def build_judged_set(ds: Dataset, which: str, history_length: int, dislike_length: int) -> EvalSet:
    """The dislike holdout's answers on ``which`` split (module docstring, "Judged sets").

    Args:
      ds: a Dataset the dislike holdout was applied to (else: no users).
      which: ``"valid"`` or ``"test"``.
      history_length, dislike_length: H and D.
    Returns:
      an EvalSet over the judged users (sorted by user index): ``target_*`` = the
      leave-last-out positive, ``dislike_*`` = the held-out dislikes, ``mask_*`` =
      the items of the user's other known events; empty when the holdout does
      not apply.
    """
    if which not in ("valid", "test"):
        raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
    info = ds.dislike_holdout
    H, D = int(history_length), int(dislike_length)
    if info is None or len(ds.users) == 0:
        return empty_eval_set(H, D)
    held = VALID if which == "valid" else TEST
    known = (TRAIN,) if which == "valid" else (TRAIN, VALID)
    in_group = info.group[ds.users] == held
    pos = ds.labels == POSITIVE
    keys = ds.users.astype(np.int64) * max(ds.num_items, 1) + ds.items
    target_idx = np.flatnonzero(pos & (ds.split == held) & in_group)
    dis = np.flatnonzero(
        (ds.labels == DISLIKE) & in_group & ((ds.split == HOLDOUT) | (ds.split == held))
    )
    # Every known event but the answers is masked; an answer on a masked item is dropped.
    mask_idx = np.flatnonzero(np.isin(ds.split, known))
    mask_keys = np.unique(keys[mask_idx])
    target_idx = target_idx[~np.isin(keys[target_idx], mask_keys)]
    dis = dis[~np.isin(keys[dis], mask_keys) & ~np.isin(keys[dis], keys[target_idx])]
    eval_users = np.intersect1d(ds.users[target_idx], ds.users[dis])
    u = len(eval_users)
    if u == 0:
        return empty_eval_set(H, D)
    target_idx = target_idx[np.isin(ds.users[target_idx], eval_users)]
    first = target_idx[np.unique(ds.users[target_idx], return_index=True)[1]]
    # The input at the target's time, the held-out dislikes hidden (they are the answers).
    history, dislikes = Timeline(ds, hide=ds.split == HOLDOUT).inputs(first, H, D)
    return _eval_set(ds, eval_users, history, dislikes, (target_idx, mask_idx, dis))


def capped_users(ds: Dataset, evalset: EvalSet, history_length: int) -> int:
    """Evaluated users of an untimed source with more than H TRAIN items.

    Their evaluation input is a seeded sample of H of their train items rather
    than all of them (0 for timestamped sources, whose input is by design the
    most recent H).
    """
    if ds.timestamped or len(evalset) == 0:
        return 0
    sel = (ds.labels == POSITIVE) & (ds.split == TRAIN)
    per_user = np.bincount(ds.users[sel], minlength=ds.num_users)
    return int((per_user[evalset.users] > int(history_length)).sum())
