"""In-memory data contracts between the readers, the model and the evaluation.

Indexing convention (one rule, everywhere): an item's *index* is its row in
``Dataset.item_ids`` (0..N-1, also its FAISS id); a *token* is ``index + 1``
and is what towers consume, 0 being padding. Histories are right-aligned:
the most recent item is in the last column, padding on the left.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

POSITIVE = 1
DISLIKE = -1

TRAIN = 0
VALID = 1
TEST = 2
#: Held out of training by the dislike holdout (:func:`trainer.data.split.apply_dislike_holdout`):
#: a dislike in a user's last fraction of events that leave-last-out would have trained on.
HOLDOUT = 3


@dataclass(frozen=True)
class DislikeHoldout:
    """The dislike holdout of a Dataset (see :func:`trainer.data.split.apply_dislike_holdout`).

    Attributes:
      spec: ``split.dislike_holdout`` as configured, e.g. ``"last_fraction:0.2"``.
      fraction: the share of each user's events held out.
      valid_share: the share of held-out users (by a stable hash of their id) whose
        held-out events are validation answers; the others' are test answers.
      users_share: the share of users held out at all (the same hash).
      group: int8 [U], ``VALID`` or ``TEST`` per held-out user, ``TRAIN`` for the others.
      first: int64 [U], position (in the Dataset's event arrays) of the first event of
        the user's last fraction (the end of their events when not held out): the
        user's dislikes from there on are held out, and every earlier event is
        strictly earlier in time.
    """

    spec: str
    fraction: float
    valid_share: float
    users_share: float
    group: np.ndarray
    first: np.ndarray


@dataclass
class Dataset:
    """All events of a source, with their split.

    Attributes:
      source: the SRC string it was read from.
      kind: ``synthetic``, ``movielens``, ``lightgcn`` or ``events``.
      user_ids: str [U], user index -> original id.
      item_ids: str [N], item index -> original id.
      users, items: int32 [E] indices of each event.
      labels: int8 [E], ``POSITIVE`` or ``DISLIKE``.
      ts: float64 [E] seconds since epoch (NaN where the source has no time).
      split: int8 [E], ``TRAIN``/``VALID``/``TEST`` (and ``HOLDOUT`` once the dislike
        holdout is applied).
      timestamped: whether ``ts`` orders events (False for lightgcn).
      item_features: name -> int32 [N] categorical feature per item (0 = unknown).
      item_feature_sizes: name -> vocabulary size of that feature (incl. 0).
      skipped_lines: lines skipped by an opt-in lenient reader (0 when strict).
      neutral: rows the reader read but dropped as neither positive nor dislike
        (MovieLens rating 3, neutral event types).
      dislike_holdout: which users' last events are held out for the dislike
        metrics, once :func:`trainer.data.split.apply_dislike_holdout` ran (None
        before, or when it does not apply).
    Events are sorted by (user, ts, original order).
    """

    source: str
    kind: str
    user_ids: np.ndarray
    item_ids: np.ndarray
    users: np.ndarray
    items: np.ndarray
    labels: np.ndarray
    ts: np.ndarray
    split: np.ndarray
    timestamped: bool
    item_features: dict[str, np.ndarray] = field(default_factory=dict)
    item_feature_sizes: dict[str, int] = field(default_factory=dict)
    skipped_lines: int = 0
    neutral: int = 0
    dislike_holdout: DislikeHoldout | None = None

    @property
    def num_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def num_items(self) -> int:
        return int(len(self.item_ids))

    def train_item_counts(self) -> np.ndarray:
        """int64 [N]: positive train events per item (popularity)."""
        sel = (self.split == TRAIN) & (self.labels == POSITIVE)
        return np.bincount(self.items[sel], minlength=self.num_items).astype(np.int64)

    def summary(self) -> dict:
        """Counts and time range, as recorded in the manifest's ``data``."""
        finite = self.ts[np.isfinite(self.ts)] if len(self.ts) else self.ts
        counts = {
            "users": self.num_users,
            "items": self.num_items,
            "events": int(len(self.users)),
            "positives": int((self.labels == POSITIVE).sum()),
            "dislikes": int((self.labels == DISLIKE).sum()),
            "train": int((self.split == TRAIN).sum()),
            "valid": int((self.split == VALID).sum()),
            "test": int((self.split == TEST).sum()),
            "holdout": int((self.split == HOLDOUT).sum()),
            "skipped_lines": int(self.skipped_lines),
            "neutral": int(self.neutral),
        }
        time_range = (
            {"min": float(finite.min()), "max": float(finite.max())} if len(finite) else None
        )
        return {
            "source": self.source,
            "kind": self.kind,
            "counts": counts,
            "time_range": time_range,
        }


@dataclass
class Examples:
    """Training rows (one per positive or dislike event of the train split).

    Attributes:
      history: int32 [n, H] tokens of the user's positives strictly before the event.
      dislikes: int32 [n, D] tokens of the user's dislikes strictly before the event.
      item: int32 [n] token of the event's item (the softmax or NTR target).
      is_positive: float32 [n], 1.0 for a positive row, 0.0 for a dislike row.
      weight: float32 [n] row weight (w of the NTR term for dislike rows).
    """

    history: np.ndarray
    dislikes: np.ndarray
    item: np.ndarray
    is_positive: np.ndarray
    weight: np.ndarray

    def __len__(self) -> int:
        return int(len(self.item))


@dataclass
class EvalSet:
    """Inputs and ground truth for the all-ranking protocol on one split.

    CSR lists use item *indices* (0-based, the score matrix's columns).

    Attributes:
      users: int32 [u] user indices evaluated (users with >= 1 target).
      history: int32 [u, H] tokens fed to the user tower.
      dislikes: int32 [u, D] tokens fed to the user tower.
      target_ptr, target_items: CSR of the held-out positive items per user.
      mask_ptr, mask_items: CSR of items removed from the user's ranking: the items of
        their train (and, for test, valid) events, dislikes included, never a held-out
        dislike (see :func:`trainer.data.examples.build_eval_set`).
      dislike_ptr, dislike_items: CSR of held-out dislikes per user (may be empty); none
        of them is masked.
    """

    users: np.ndarray
    history: np.ndarray
    dislikes: np.ndarray
    target_ptr: np.ndarray
    target_items: np.ndarray
    mask_ptr: np.ndarray
    mask_items: np.ndarray
    dislike_ptr: np.ndarray
    dislike_items: np.ndarray

    def __len__(self) -> int:
        return int(len(self.users))

    def targets(self, row: int) -> np.ndarray:
        return self.target_items[self.target_ptr[row] : self.target_ptr[row + 1]]

    def mask(self, row: int) -> np.ndarray:
        return self.mask_items[self.mask_ptr[row] : self.mask_ptr[row + 1]]

    def heldout_dislikes(self, row: int) -> np.ndarray:
        return self.dislike_items[self.dislike_ptr[row] : self.dislike_ptr[row + 1]]

    def subset(self, rows: np.ndarray) -> EvalSet:
        """The eval set restricted to ``rows`` (e.g. a seeded user sample)."""

        def csr(ptr: np.ndarray, vals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lens = ptr[rows + 1] - ptr[rows]
            new_ptr = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
            parts = [vals[ptr[r] : ptr[r + 1]] for r in rows]
            new_vals = np.concatenate(parts).astype(vals.dtype) if parts else vals[:0]
            return new_ptr, new_vals

        tp, ti = csr(self.target_ptr, self.target_items)
        mp, mi = csr(self.mask_ptr, self.mask_items)
        dp, di = csr(self.dislike_ptr, self.dislike_items)
        return EvalSet(
            self.users[rows], self.history[rows], self.dislikes[rows], tp, ti, mp, mi, dp, di
        )
