"""The tests' recall helper on hand-computed cases."""

from __future__ import annotations

import numpy as np

from tests.recall import tie_aware_recall


def test_ties_at_the_kth_score_never_cost_recall_and_misses_do():
    items = np.array([[3.0], [2.0], [2.0], [1.0]])
    q = np.array([[1.0]])
    assert tie_aware_recall(np.array([[0, 2]]), q, items, 2) == 1.0  # 2 ties with 1
    assert tie_aware_recall(np.array([[0, 1]]), q, items, 2) == 1.0
    assert tie_aware_recall(np.array([[0, 3]]), q, items, 2) == 0.5
    assert tie_aware_recall(np.array([[0, -1]]), q, items, 2) == 0.5  # nothing returned
    assert tie_aware_recall(np.array([[3, 0], [1, 2]]), np.vstack([q, q]), items, 2) == 0.75
