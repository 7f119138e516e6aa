"""Item quality from the train split: the share of an item's train events that are dislikes.

``model.item_dislike_ratio_buckets = K`` (> 0) adds a categorical item feature,
``dislike_ratio``, to the item tower: per item, ``dislikes / (positives +
dislikes)`` over its **TRAIN** events only (never valid, test or held-out
events, so no evaluation answer leaks into it), cut into K equal-width bins
of [0, 1]. Values: 0 = unknown (padding, or an item a warm start added rows
for), 1 = fewer than ``model.item_dislike_ratio_min_events`` train events (too
few to say), ``2 + min(floor(ratio * K), K - 1)`` otherwise. It is recomputed
from each training's own train split and baked into the exported item
vectors, so serving needs nothing new.

Why: a MovieLens user's dislikes are films they chose to watch (relevant to
their taste) that turned out bad; a relevance-only model ranks them high, and
the logQ-corrected cosine removes popularity, the only quality proxy it had.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from trainer.config import ModelConfig
from trainer.data.dataset import DISLIKE, POSITIVE, TRAIN, Dataset

#: Name of the derived feature (not item metadata: never ingested, never in ``Dataset.item_features``).
DISLIKE_RATIO = "dislike_ratio"


def dislike_ratio_values(ds: Dataset, buckets: int, min_events: int) -> np.ndarray:
    """int32 [N]: each item's ``dislike_ratio`` value (module docstring), from TRAIN events only."""
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    train = ds.split == TRAIN
    n = ds.num_items
    likes = np.bincount(ds.items[train & (ds.labels == POSITIVE)], minlength=n)[:n]
    dislikes = np.bincount(ds.items[train & (ds.labels == DISLIKE)], minlength=n)[:n]
    total = likes + dislikes
    ratio = dislikes / np.maximum(total, 1)
    binned = 2 + np.minimum(np.floor(ratio * buckets).astype(np.int64), buckets - 1)
    return np.where(total < max(int(min_events), 1), 1, binned).astype(np.int32)


def tower_item_features(
    ds: Dataset, config: ModelConfig
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """(features, sizes) for the item tower: ``ds``'s metadata features, plus
    ``dislike_ratio`` when ``config.item_dislike_ratio_buckets`` > 0.

    ``ds`` must already carry its final split (the dislike holdout applied), so
    that only its TRAIN events count.
    """
    features: dict[str, np.ndarray] = dict(ds.item_features)
    sizes: dict[str, int] = dict(ds.item_feature_sizes)
    k = config.item_dislike_ratio_buckets
    if k > 0:
        features[DISLIKE_RATIO] = dislike_ratio_values(ds, k, config.item_dislike_ratio_min_events)
        sizes[DISLIKE_RATIO] = k + 2
    return features, sizes


def metadata_feature_names(sizes: Mapping[str, int]) -> list[str]:
    """The item-metadata features among ``sizes`` (the derived ``dislike_ratio`` left out), sorted."""
    return sorted(name for name in sizes if name != DISLIKE_RATIO)
