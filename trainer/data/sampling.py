"""Vectorised weighted draws within groups, for the synthetic generator.

Every sampler draws one member per query in one NumPy pass (no per-event Python),
from the ``rng`` it is given, so the same seed gives the same draws.
"""

from __future__ import annotations

import numpy as np

from trainer.data.split import group_starts


def segment_sampler(weights: np.ndarray, groups: np.ndarray, num_groups: int):
    """A sampler of one member of group g with probability proportional to its weight."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    w = weights[order]
    cum = np.cumsum(w)
    starts = np.searchsorted(g, np.arange(num_groups))
    ends = np.searchsorted(g, np.arange(num_groups), side="right")
    base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
    total = cum[ends - 1] - base

    def sample(group: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        target = base[group] + rng.random(len(group)) * total[group]
        # Sorted queries walk ``cum`` once instead of jumping around it.
        by_target = np.argsort(target)
        at = np.empty(len(target), dtype=np.int64)
        at[by_target] = np.searchsorted(cum, target[by_target], side="right")
        return order[np.clip(at, starts[group], ends[group] - 1)]

    return sample


def first_k_per_user(
    users: np.ndarray, keep: np.ndarray, k: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Indices of a random subset of the ``keep`` rows: at most ``k[u]`` per user."""
    idx = np.flatnonzero(keep)
    order = idx[np.lexsort((rng.random(len(idx)), users[idx]))]
    u = users[order]
    rank = np.arange(len(order)) - group_starts(u)
    return np.sort(order[rank < k[u]])


def keyed_sampler(weights: np.ndarray, keys: np.ndarray, members: np.ndarray | None = None):
    """Samplers of one member with a given int64 key, by weight; ``has(key)``: any member?"""
    uniq, dense = np.unique(keys, return_inverse=True)
    sample_dense = segment_sampler(weights, dense, len(uniq))
    ids = np.arange(len(keys)) if members is None else members

    def locate(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.clip(np.searchsorted(uniq, key), 0, max(len(uniq) - 1, 0))
        return at, (uniq[at] == key) if len(uniq) else np.zeros(len(key), bool)

    def has(key: np.ndarray) -> np.ndarray:
        return locate(key)[1]

    def sample(key: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return ids[sample_dense(locate(key)[0], rng)]

    return sample, has
