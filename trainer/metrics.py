"""Exact all-ranking evaluation: top-K over the whole catalog and the contract's metrics (docs/CONTRACT.md).

Pure NumPy; callers pass arrays and an ``embed`` callable, never a model. Every
function works on item *indices* (0-based rows of the item embedding matrix),
as the CSR lists of :class:`~trainer.data.dataset.EvalSet` do; a padding slot in
a top-K array is ``-1`` (only when a user has fewer than K unmasked items).

Ranking order is total and deterministic: score descending, then item index
ascending. So two rankings of the same scores agree item for item, and "the
ranking with item t also masked" is exactly "the ranking with t removed".

The judged-set dislike metrics and the responsiveness probe are
:mod:`trainer.dislike_metrics`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from common.files import atomic_path
from trainer.data.dataset import EvalSet

KS = (10, 20, 50)
LONGTAIL_GROUPS = 10
# Score-matrix elements per chunk: 8M float32 = 32 MB, whatever ``batch_size`` says.
_MAX_CHUNK_ELEMENTS = 8_000_000

EmbedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def select_topk(neg_scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` smallest entries of a 1-D array, ascending, ties by index.

    ``+inf`` marks excluded entries: they are never returned, their slots are
    ``-1``. Used with negated scores so "smallest" is "best".

    Args:
      neg_scores: float [N].
    Returns:
      int64 [k].
    """
    n = neg_scores.shape[0]
    out = np.full(k, -1, dtype=np.int64)
    kk = min(k, n)
    if kk == 0:
        return out
    part = np.argpartition(neg_scores, kk - 1)[:kk]
    kth = neg_scores[part].max()
    # Strictly better than the k-th value, plus the lowest-index items tied with it
    # (flatnonzero is in index order); a stable sort by value then orders ties by
    # index. O(N) even when most scores tie (an untrained or collapsed model).
    better = np.flatnonzero(neg_scores < kth)
    tied = np.flatnonzero(neg_scores == kth)[: kk - len(better)]
    cand = np.concatenate([better, tied])
    cand = cand[np.argsort(neg_scores[cand], kind="stable")]
    cand = cand[np.isfinite(neg_scores[cand])]
    out[: len(cand)] = cand
    return out


def _check_finite(name: str, arr: np.ndarray) -> None:
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).any(axis=tuple(range(1, arr.ndim))).sum())
        raise ValueError(f"{name} has non-finite values in {bad} row(s); cannot rank")


def ranked(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    mask_ptr: np.ndarray,
    mask_items: np.ndarray,
    k: int,
    batch_size: int,
    extra_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k over ``user_emb @ item_emb.T`` with CSR masks (+ one extra item per user)."""
    u, n = user_emb.shape[0], item_emb.shape[0]
    if user_emb.ndim != 2 or item_emb.ndim != 2 or user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(
            f"embedding shapes do not match: users {user_emb.shape}, items {item_emb.shape}"
        )
    if len(mask_ptr) != u + 1:
        raise ValueError(f"mask_ptr has {len(mask_ptr)} entries for {u} users (want users + 1)")
    if len(mask_items) and (mask_items.min() < 0 or mask_items.max() >= n):
        raise ValueError(
            f"mask items must be indices in [0, {n}); got range [{mask_items.min()}, {mask_items.max()}]"
        )
    _check_finite("user embeddings", user_emb)
    _check_finite("item embeddings", item_emb)
    out = np.full((u, k), -1, dtype=np.int64)
    step = max(1, min(batch_size, _MAX_CHUNK_ELEMENTS // max(n, 1)))
    items_t = np.ascontiguousarray(item_emb.T)
    for lo in range(0, u, step):
        hi = min(lo + step, u)
        neg = user_emb[lo:hi] @ items_t
        np.negative(neg, out=neg)
        a, b = int(mask_ptr[lo]), int(mask_ptr[hi])
        rows = np.repeat(np.arange(hi - lo), np.diff(mask_ptr[lo : hi + 1]))
        neg[rows, mask_items[a:b]] = np.inf
        if extra_mask is not None:
            ok = extra_mask[lo:hi] >= 0
            neg[np.flatnonzero(ok), extra_mask[lo:hi][ok]] = np.inf
        for r in range(hi - lo):
            out[lo + r] = select_topk(neg[r], k)
    return out


def topk_all_ranking(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    evalset: EvalSet,
    k: int = 50,
    batch_size: int = 1024,
) -> np.ndarray:
    """Top-k items of every user over the whole catalog, the user's mask removed.

    The score is the inner product of what it is given (normalise both sides
    first for cosine). Masked items are never returned; a user with fewer than
    k unmasked items gets ``-1`` in the remaining slots.

    Args:
      user_emb: float [u, d], row r is ``evalset`` row r.
      item_emb: float [N, d].
      evalset: supplies the mask CSR (item indices in [0, N)).
      k: list length.
      batch_size: users per score chunk (also capped at ~32 MB of scores).
    Returns:
      int64 [u, k] item indices, best first (score desc, index asc).
    """
    if user_emb.shape[0] != len(evalset):
        raise ValueError(
            f"user_emb has {user_emb.shape[0]} rows but the eval set has {len(evalset)} users"
        )
    return ranked(user_emb, item_emb, evalset.mask_ptr, evalset.mask_items, k, batch_size)


def popular_topk(item_counts: np.ndarray, evalset: EvalSet, k: int = 50) -> np.ndarray:
    """The most-popular ranking with the same masking and tie-break as :func:`topk_all_ranking`.

    Args:
      item_counts: int [N] train popularity (score = count).
    Returns:
      int64 [u, k], ``-1`` padded when a user has fewer than k unmasked items.
    """
    n = len(item_counts)
    order = np.lexsort((np.arange(n), -np.asarray(item_counts, dtype=np.float64)))
    out = np.full((len(evalset), k), -1, dtype=np.int64)
    for r in range(len(evalset)):
        mask = evalset.mask(r)
        # Only the first k + |mask| of the global order can make the list.
        head = order[: k + len(mask)]
        head = head[~np.isin(head, mask)][:k]
        out[r, : len(head)] = head
    return out


def _pair_keys(rows: np.ndarray, items: np.ndarray, width: int) -> np.ndarray:
    return rows.astype(np.int64) * width + items.astype(np.int64)


def hits(topk: np.ndarray, ptr: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bool [u, k]: topk[r, j] is in row r's CSR set; and int [u]: distinct set size."""
    u, k = topk.shape
    width = int(max(topk.max(initial=0), items.max(initial=0))) + 1
    set_keys = np.unique(_pair_keys(np.repeat(np.arange(u), np.diff(ptr)), items, width))
    sizes = np.bincount(set_keys // width, minlength=u)
    rank_keys = _pair_keys(np.repeat(np.arange(u), k), topk.ravel(), width)
    hit = np.isin(rank_keys, set_keys).reshape(u, k) & (topk >= 0)
    return hit, sizes


def ranking_metrics(topk: np.ndarray, evalset: EvalSet, item_counts: np.ndarray) -> dict:
    """The ranking metrics (docs/CONTRACT.md) of ``topk`` against ``evalset``'s held-out items.

    Per user, with T the distinct held-out positives and L_K the first K of the list:
      - ``recall@K`` = |L_K ∩ T| / |T|; ``hit_rate@K`` = [|L_K ∩ T| > 0];
      - ``ndcg@K`` = DCG / IDCG, binary gains, DCG = sum_{j<K, L_j in T} 1/log2(j+2),
        IDCG over min(|T|, K) hits; all three are means over users with |T| >= 1.
      - ``coverage@20`` = distinct items over all top-20 lists / N, N = len(item_counts).
      - ``dislike_rate@20``: over users with >= 1 held-out dislike (set D), the mean of
        |L_20 ∩ D| / |D|; 0.0 when no user has one (``num_users_with_dislikes`` = 0).
      - ``longtail_recall@20``: items sorted by train popularity ascending (ties by
        index) and cut into 10 groups of equal item count (sizes differ by <= 1),
        least popular first; group g's value = top-20 hits on targets in g / targets
        in g, pooled over users (the SSM paper's Fig. 1 view); 0.0 for a group no
        target falls in. Targets outside the catalog (index >= N) count as misses
        in recall but belong to no group.
    K runs over 10, 20, 50 up to ``topk.shape[1]``; the @20 metrics need k >= 20.

    Args:
      topk: int [u, k] item indices best first, ``-1`` = empty slot.
      item_counts: int [N] train popularity; N is the catalog size.
    Returns:
      metric name -> float (list of 10 floats for ``longtail_recall@20``), plus the
      counts ``num_users`` (users with >= 1 target: the recall/ndcg/hit denominator)
      and ``num_users_with_dislikes`` (the dislike_rate denominator).
    """
    u, k = topk.shape
    if u != len(evalset):
        raise ValueError(f"topk has {u} rows but the eval set has {len(evalset)} users")
    n = len(item_counts)
    hit, n_targets = hits(topk, evalset.target_ptr, evalset.target_items)
    has_t = n_targets > 0
    denom = np.maximum(n_targets, 1)
    out: dict = {}
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = np.concatenate([[0.0], np.cumsum(discount)])
    for kk in [cut for cut in KS if cut <= k]:
        h = hit[:, :kk]
        nh = h.sum(axis=1)
        dcg = (h * discount[:kk]).sum(axis=1)
        idcg = ideal[np.minimum(n_targets, kk)]
        out[f"recall@{kk}"] = _mean((nh / denom)[has_t])
        out[f"ndcg@{kk}"] = _mean((dcg / np.maximum(idcg, 1e-12))[has_t])
        out[f"hit_rate@{kk}"] = _mean((nh > 0)[has_t].astype(np.float64))
    if k >= 20:
        top20 = topk[:, :20]
        out["coverage@20"] = float(len(np.unique(top20[top20 >= 0])) / n) if n else 0.0
        dhit, n_dis = hits(top20, evalset.dislike_ptr, evalset.dislike_items)
        has_d = n_dis > 0
        out["dislike_rate@20"] = _mean((dhit.sum(axis=1) / np.maximum(n_dis, 1))[has_d])
        out["longtail_recall@20"] = _longtail(hit[:, :20], topk[:, :20], evalset, item_counts)
        out["num_users_with_dislikes"] = int(has_d.sum())
    out["num_users"] = int(has_t.sum())
    return out


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else 0.0


def _longtail(
    hit20: np.ndarray, top20: np.ndarray, evalset: EvalSet, item_counts: np.ndarray
) -> list[float]:
    n = len(item_counts)
    order = np.lexsort((np.arange(n), np.asarray(item_counts)))
    group = np.empty(n, dtype=np.int64)
    for g, members in enumerate(np.array_split(order, LONGTAIL_GROUPS)):
        group[members] = g
    # Distinct (user, target) pairs inside the catalog, so a duplicated target counts once.
    rows = np.repeat(np.arange(len(evalset)), np.diff(evalset.target_ptr))
    width = max(n, 1)
    keys = np.unique(_pair_keys(rows, evalset.target_items, width)[evalset.target_items < n])
    targets_per_group = np.bincount(group[keys % width], minlength=LONGTAIL_GROUPS)
    hit_items = top20[hit20]
    hits_per_group = np.bincount(group[hit_items[hit_items < n]], minlength=LONGTAIL_GROUPS)
    return [
        float(h / t) if t else 0.0 for h, t in zip(hits_per_group, targets_per_group, strict=True)
    ]


def write_topk_jsonl(
    path: str | Path, user_ids: Sequence[str], topk: np.ndarray, item_ids: np.ndarray
) -> None:
    """Write the ``--topk-out`` file (docs/CONTRACT.md) atomically (temp file, fsync, ``os.replace``).

    One line per user: ``{"user_id": ..., "items": [item ids, best first]}``;
    ``-1`` slots (fewer unmasked items than k) are left out.

    Args:
      user_ids: [u] original user ids, row r of ``topk``.
      topk: int [u, k] item indices.
      item_ids: str [N] index -> original item id.
    """
    if len(user_ids) != topk.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids for {topk.shape[0]} ranked rows")
    ids = np.asarray(item_ids).astype(str)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for uid, row in zip(user_ids, topk, strict=True):
            items = [str(ids[i]) for i in row if i >= 0]
            fh.write(json.dumps({"user_id": str(uid), "items": items}) + "\n")
