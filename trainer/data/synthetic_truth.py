"""What the synthetic generator knows about its world, and the benchmark cases read from it.

:func:`trainer.data.synthetic.generate_with_truth` returns a data set and its
:class:`GroundTruth` (each item's cluster, each user's aversions, the late items);
the helpers below count labels per item and list the benchmark cases built from
the truth: popular items their averse users dislike, and cold-start items beside
disliked items with the same few events.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset


@dataclass(frozen=True, eq=False)
class GroundTruth:
    """What the generator knows about the world behind a synthetic Dataset.

    Users and items are the Dataset's indices (user ``u<n>`` is index n, item
    ``i<n>`` index n).

    Attributes:
      cluster_kind: ``"latent"`` (``aversions >= 1``: the latent clusters, not an
        item feature) or ``"category"`` (``aversions=0``: the clusters are the
        categories, ``item_features["category"] - 1``, and a user's aversions are
        their disliked categories).
      num_clusters: C.
      item_cluster: int32 [N], each item's cluster in 0..C-1.
      aversions: int32 [U, A], each user's averse clusters (A may be 0).
      late_items: int32 [n], sorted indices of the items added late (empty
        without ``late_items``).
      late_from: unix time from which late items have events (inf without them).
    """

    cluster_kind: str
    num_clusters: int
    item_cluster: np.ndarray
    aversions: np.ndarray
    late_items: np.ndarray
    late_from: float

    def averse_matrix(self) -> np.ndarray:
        """bool [U, C]: whether user u is averse to cluster c."""
        out = np.zeros((len(self.aversions), self.num_clusters), dtype=bool)
        out[np.arange(len(self.aversions))[:, None], self.aversions] = True
        return out

    def averse(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool [E]: whether each (user, item) pair falls in one of the user's aversions."""
        items = np.asarray(items)
        return (self.aversions[np.asarray(users)] == self.item_cluster[items][..., None]).any(
            axis=-1
        )

    def averse_users(self, item: int) -> np.ndarray:
        """int64 [n]: the users averse to ``item``'s cluster."""
        return np.flatnonzero((self.aversions == self.item_cluster[item]).any(axis=1))

    def is_late(self) -> np.ndarray:
        """bool [N]: whether each item was added late."""
        out = np.zeros(len(self.item_cluster), dtype=bool)
        out[self.late_items] = True
        return out


def label_counts(ds: Dataset, split: int | None = TRAIN) -> tuple[np.ndarray, np.ndarray]:
    """int64 [N] positives and int64 [N] dislikes per item, over ``split`` (None = all events)."""
    sel = np.ones(len(ds.items), bool) if split is None else ds.split == split
    pos = np.bincount(ds.items[sel & (ds.labels == POSITIVE)], minlength=ds.num_items)
    dis = np.bincount(ds.items[sel & (ds.labels == DISLIKE)], minlength=ds.num_items)
    return pos.astype(np.int64), dis.astype(np.int64)


def explained_dislike_counts(
    ds: Dataset, truth: GroundTruth, split: int | None = TRAIN
) -> np.ndarray:
    """int64 [N]: dislikes per item by users averse to its cluster, over ``split``."""
    sel = ds.labels == DISLIKE
    if split is not None:
        sel &= ds.split == split
    sel &= truth.averse(ds.users, ds.items)
    return np.bincount(ds.items[sel], minlength=ds.num_items).astype(np.int64)


def popular_disliked_items(
    ds: Dataset,
    truth: GroundTruth,
    *,
    min_likes: int = 100,
    min_dislikes: int = 5,
    split: int | None = TRAIN,
) -> np.ndarray:
    """Benchmark case (a): popular items that the users averse to them dislike.

    Returns:
      int64 item indices with at least ``min_likes`` positives and at least
      ``min_dislikes`` dislikes by users averse to the item's cluster (over
      ``split``; None = all events), most liked first. Their likers are
      ``ds.users[(ds.items == i) & (ds.labels == POSITIVE)]``; every user
      averse to them is ``truth.averse_users(i)``.
    """
    likes, _ = label_counts(ds, split)
    explained = explained_dislike_counts(ds, truth, split)
    items = np.flatnonzero((likes >= min_likes) & (explained >= min_dislikes))
    return items[np.lexsort((items, -likes[items]))]


def cold_and_disliked_items(
    ds: Dataset, truth: GroundTruth, *, max_events: int = 5, split: int | None = TRAIN
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Benchmark case (b): a cold-start item and a disliked item with the same few events.

    Returns:
      n -> (late items with exactly n events, none of them a dislike; items with
      exactly n events, all of them dislikes by users averse to the item), both
      int64 sorted, for each n in 1..``max_events`` where both lists are
      non-empty. Events are counted over ``split`` (None = all events). With this
      generator the disliked ones are mostly late items too: an item added before
      the window has far more events.
    """
    likes, dislikes = label_counts(ds, split)
    explained = explained_dislike_counts(ds, truth, split)
    total = likes + dislikes
    late = truth.is_late()
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for n in range(1, max_events + 1):
        cold = np.flatnonzero(late & (likes == n) & (dislikes == 0))
        disliked = np.flatnonzero((total == n) & (explained == n))
        if len(cold) and len(disliked):
            out[n] = (cold, disliked)
    return out
