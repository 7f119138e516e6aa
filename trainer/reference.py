"""A fixed, model-independent item reference space (for the responsiveness probe).

"Close to item t" must not depend on the model being judged, or a model could
score well by moving its own notion of closeness. The reference here is plain
item-item co-occurrence on the TRAIN positives: the cosine similarity of the
columns of the binary user x item matrix X,

    sim(i, j) = |users(i) ∩ users(j)| / sqrt(|users(i)| |users(j)|),

and each item's reference neighbours are its top-m items by that similarity
(excluding itself; ties by item index; only items with sim > 0; padded with -1).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from trainer.metrics import select_topk

# Item rows per sparse product block: bounds the dense [block, N] similarity buffer.
_MAX_BLOCK_ELEMENTS = 8_000_000


def cooccurrence_neighbors(
    user_idx: np.ndarray, item_idx: np.ndarray, num_items: int, m: int = 50
) -> np.ndarray:
    """Top-m co-occurrence (cosine) neighbours of every item.

    Deterministic and exact (no sampling): the product X^T X is computed in
    blocks of item rows, each block densified to at most ~32 MB.

    Args:
      user_idx: int [E] user index of each train positive event.
      item_idx: int [E] item index of each event, in [0, num_items); repeated
        (user, item) pairs count once (the matrix is binary).
      num_items: N, the catalog size (items never seen get an all ``-1`` row).
      m: neighbours per item.
    Returns:
      int32 [N, m] item indices, most similar first, ``-1`` padded.
    """
    user_idx = np.asarray(user_idx, dtype=np.int64)
    item_idx = np.asarray(item_idx, dtype=np.int64)
    if user_idx.shape != item_idx.shape:
        raise ValueError(f"user_idx {user_idx.shape} and item_idx {item_idx.shape} differ in shape")
    out = np.full((num_items, m), -1, dtype=np.int32)
    if num_items == 0 or m == 0 or len(item_idx) == 0:
        return out
    if item_idx.min() < 0 or item_idx.max() >= num_items:
        raise ValueError(
            f"item_idx must lie in [0, {num_items}); got [{item_idx.min()}, {item_idx.max()}]"
        )
    if user_idx.min() < 0:
        raise ValueError("user_idx must be non-negative")
    num_users = int(user_idx.max()) + 1
    x = sp.csr_matrix(
        (np.ones(len(user_idx), dtype=np.float32), (user_idx, item_idx)),
        shape=(num_users, num_items),
    )
    x.sum_duplicates()
    x.data[:] = 1.0
    xt = x.T.tocsr()  # [N, U]
    norm = np.sqrt(np.asarray(x.sum(axis=0)).ravel()).astype(np.float32)
    inv = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    step = max(1, _MAX_BLOCK_ELEMENTS // num_items)
    x_csc = x.tocsc()
    for lo in range(0, num_items, step):
        hi = min(lo + step, num_items)
        co = (xt[lo:hi] @ x_csc).tocsr()  # [b, N] shared-user counts
        neg = np.full((hi - lo, num_items), np.inf, dtype=np.float32)
        rows = np.repeat(np.arange(hi - lo), np.diff(co.indptr))
        # Negated cosine, so the smallest is the most similar; zero stays +inf (excluded).
        neg[rows, co.indices] = -(co.data * inv[lo + rows] * inv[co.indices])
        neg[np.arange(hi - lo), np.arange(lo, hi)] = np.inf  # never your own neighbour
        for r in range(hi - lo):
            if co.indptr[r + 1] > co.indptr[r]:
                out[lo + r] = select_topk(neg[r], m)
    return out
