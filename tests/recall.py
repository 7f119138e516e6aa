"""One tie-aware recall of an approximate search against exact inner-product search."""

from __future__ import annotations

import numpy as np

#: Scores this close to the k-th exact score count as tied with it.
TIE_EPS = 1e-5


def tie_aware_recall(found: np.ndarray, queries: np.ndarray, items: np.ndarray, k: int) -> float:
    """Share of the ``k`` returned rows per query that belong in an exact top-k.

    A row belongs when its exact score (float64, computed here, independent of
    FAISS) reaches the query's k-th best exact score (within :data:`TIE_EPS`):
    among tied items any choice is right, so ties never cost recall. ``-1``
    (nothing returned) counts as a miss.

    Args:
      found: int [q, k] item rows from the search under test.
      queries: float [q, d]; items: float [N, d].
    """
    found = np.asarray(found)[:, :k]
    scores = np.asarray(queries, np.float64) @ np.asarray(items, np.float64).T
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]
    got = np.take_along_axis(scores, np.maximum(found, 0), axis=1)
    hit = (found >= 0) & (got >= kth[:, None] - TIE_EPS)
    return float(hit.sum() / (k * len(found)))
