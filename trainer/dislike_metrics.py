"""The dislike metrics beyond ``dislike_rate@20``: judged-set metrics and responsiveness.

``dislike_rate@20`` is a ranking metric (:func:`trainer.metrics.ranking_metrics`). On a
*judged* set (users with both a positive and a dislike answer,
:func:`trainer.data.examples.build_judged_set`) :func:`judged_metrics` gives the
like/dislike AUC of the scores and the share of dislikes among the judged items the
top-20 shows; :func:`responsiveness` is the NTR paper's probe (how the top-k moves
away from an item right after it is disliked). Same conventions as
:mod:`trainer.metrics`: item indices, ``-1`` padding, the same total ranking order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trainer.data.dataset import EvalSet
from trainer.metrics import EmbedFn, hits, ranked

#: Values of the judged metrics where they cannot be measured (no judged user): an
#: AUC of 0.5 (cannot tell likes from dislikes) and no dislike in any list.
JUDGED_NOT_MEASURED = {
    "like_dislike_auc": 0.5,
    "dislike_share@20": 0.0,
    "num_users_judged": 0,
    "num_judged_in_top20": 0,
    "num_users_judged_in_top20": 0,
}


def csr_within_catalog(
    ptr: np.ndarray, vals: np.ndarray, num_items: int
) -> tuple[np.ndarray, np.ndarray]:
    """A CSR list (``ptr`` [rows + 1], ``vals``) without the items >= ``num_items``.

    Every row stays (possibly empty); ``ptr`` keeps its dtype.
    """
    ok = vals < num_items
    rows = np.repeat(np.arange(len(ptr) - 1), np.diff(ptr))
    counts = np.bincount(rows[ok], minlength=len(ptr) - 1)
    return np.concatenate([[0], np.cumsum(counts)]).astype(ptr.dtype), vals[ok]


def judged_in_catalog(judged: EvalSet, num_items: int) -> EvalSet:
    """``judged`` without answers and mask entries outside a catalog of ``num_items``.

    Unlike recall's targets (a miss when unknown), an answer the model has no
    score for cannot be judged either way; users left without a positive or a
    dislike answer are dropped.
    """
    tp, ti = csr_within_catalog(judged.target_ptr, judged.target_items, num_items)
    mp, mi = csr_within_catalog(judged.mask_ptr, judged.mask_items, num_items)
    dp, di = csr_within_catalog(judged.dislike_ptr, judged.dislike_items, num_items)
    out = EvalSet(judged.users, judged.history, judged.dislikes, tp, ti, mp, mi, dp, di)
    both = np.flatnonzero((np.diff(tp) > 0) & (np.diff(dp) > 0))
    return out if len(both) == len(out) else out.subset(both)


def like_dislike_auc(
    scores_of: Callable[[np.ndarray, np.ndarray], np.ndarray], judged: EvalSet
) -> float:
    """Mean over judged users of the share of (positive, dislike) answer pairs the
    scores order right: positive above dislike = 1, a tie = 1/2.

    Averaged over users (each user weighs the same, as recall does), not pooled
    over pairs (which would let the users with the most answers decide). Every
    answer is scored, masked or not: this is about the scores, not the list.
    0.5 = the scores cannot tell a user's likes from their dislikes.

    Args:
      scores_of: (rows int [m], items int [m]) -> float [m], the score of item
        ``items[j]`` for the user of row ``rows[j]`` (the ranking's score).
      judged: users with >= 1 positive (``target_*``) and >= 1 dislike
        (``dislike_*``) answer (:func:`trainer.data.examples.build_judged_set`).
    Returns:
      the mean AUC; 0.5 for no user.
    """
    u = len(judged)
    if u == 0:
        return 0.5
    n_pos, n_dis = np.diff(judged.target_ptr), np.diff(judged.dislike_ptr)
    rows = np.concatenate([np.repeat(np.arange(u), n_pos), np.repeat(np.arange(u), n_dis)]).astype(
        np.int64
    )
    items = np.concatenate([judged.target_items, judged.dislike_items]).astype(np.int64)
    is_pos = np.concatenate(
        [np.ones(len(judged.target_items)), np.zeros(len(judged.dislike_items))]
    )
    score = np.asarray(scores_of(rows, items), dtype=np.float64)
    # Mann-Whitney per user: midranks of the scores within the user (ties share a rank).
    order = np.lexsort((score, rows))
    rows, score, is_pos = rows[order], score[order], is_pos[order]
    m = len(rows)
    new_run = np.ones(m, dtype=bool)
    new_run[1:] = (rows[1:] != rows[:-1]) | (score[1:] != score[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_end = np.append(run_start[1:], m)  # exclusive
    user_start = np.searchsorted(rows, np.arange(u))
    # 1-based rank within the user, averaged over the run of tied scores.
    midrank = (run_start + run_end + 1) / 2.0 - user_start[rows[run_start]]
    rank = midrank[run_id]
    r_pos = np.bincount(rows, weights=rank * is_pos, minlength=u)
    auc = (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_dis)
    return float(auc.mean())


def dislike_share(topk: np.ndarray, judged: EvalSet, k: int = 20) -> tuple[float, int, int]:
    """Held-out dislikes among the judged items of the top-k, pooled over users.

    ``sum_u |L_k ∩ D_u| / sum_u (|L_k ∩ D_u| + |L_k ∩ P_u|)``: of the answers a
    list shows, the share that are dislikes. Lower is better, and recommending
    worse does not lower it (a list of unjudged items has no share at all).

    Returns:
      (share, judged items in the lists, users whose list holds one); the share
      is 0.0 when no list holds a judged item.
    """
    if len(judged) == 0:
        return 0.0, 0, 0
    top = topk[:, :k]
    d_hit, _ = hits(top, judged.dislike_ptr, judged.dislike_items)
    p_hit, _ = hits(top, judged.target_ptr, judged.target_items)
    nd, npos = int(d_hit.sum()), int(p_hit.sum())
    users = int((d_hit | p_hit).any(axis=1).sum())
    return (nd / (nd + npos) if nd + npos else 0.0), nd + npos, users


def judged_metrics(
    topk: np.ndarray,
    scores_of: Callable[[np.ndarray, np.ndarray], np.ndarray],
    judged: EvalSet,
) -> dict:
    """``like_dislike_auc``, ``dislike_share@20`` and their counts on a judged set.

    Args:
      topk: int [u, >=20] the ranking of ``judged``'s users under its mask.
      scores_of: as in :func:`like_dislike_auc`.
    Returns:
      the two metrics, ``num_users_judged`` (users with both kinds of answer: the
      AUC's users), ``num_judged_in_top20`` (the share's denominator) and
      ``num_users_judged_in_top20`` (the users it comes from).
    """
    if len(judged) == 0:
        return dict(JUDGED_NOT_MEASURED)
    share, shown, shown_users = dislike_share(topk, judged, 20)
    return {
        "like_dislike_auc": like_dislike_auc(scores_of, judged),
        "dislike_share@20": share,
        "num_users_judged": len(judged),
        "num_judged_in_top20": shown,
        "num_users_judged_in_top20": shown_users,
    }


def embedding_scores(
    user_emb: np.ndarray, item_emb: np.ndarray
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """``scores_of`` for inner-product scores: ``user_emb[row] . item_emb[item]``."""

    def scores_of(rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.float64)
        for lo in range(0, len(rows), 65536):
            hi = min(lo + 65536, len(rows))
            out[lo:hi] = np.einsum("ij,ij->i", user_emb[rows[lo:hi]], item_emb[items[lo:hi]])
        return out

    return scores_of


def responsiveness(
    embed: EmbedFn,
    item_emb: np.ndarray,
    evalset: EvalSet,
    topk: np.ndarray,
    neighbors: np.ndarray,
    k: int = 20,
) -> float:
    """Relative change of the top-k's closeness to an item right after disliking it.

    The NTR paper's responsiveness probe, made reproducible:

    1. For each test user r, t_r = ``topk[r, 0]``, their current top-1 (users with
       no item ranked are skipped).
    2. *Before*: the user's ranking with t_r removed, i.e. ``topk[r, 1:k+1]``
       (re-ranked when ``topk`` has fewer than k + 1 columns), so both lists are
       drawn from the same candidates.
    3. *After*: the dislike input gets t_r as its most recent dislike (the
       right-aligned token array shifts left by one and token t_r + 1 goes last),
       the user is re-embedded with ``embed(history, dislikes)`` and re-ranked with
       the same mask plus t_r (now disliked, so never shown).
    4. "Close to t_r" = the m items of ``neighbors[t_r]``, t_r's neighbours in a
       fixed, model-independent reference space (see :mod:`trainer.reference`);
       ``-1`` entries are padding.
    5. responsiveness@k = (sum_r close_after_r - sum_r close_before_r) / sum_r
       close_before_r: a relative change over all users pooled; negative = fewer
       items like the disliked one; 0.0 when nothing was close before, or when
       the tower takes no dislike input (D = 0).

    Args:
      embed: (history int32 [u, H], dislikes int32 [u, D]) tokens -> float [u, d]
        user vectors, comparable with ``item_emb`` by inner product.
      item_emb: float [N, d].
      topk: int [u, >=1] the current ranking from :func:`topk_all_ranking`.
      neighbors: int [N, m] reference neighbours per item, ``-1`` padded.
    Returns:
      the relative change, a float >= -1.
    """
    if len(evalset) == 0 or evalset.dislikes.shape[1] == 0:
        return 0.0
    top1 = topk[:, 0]
    rows = np.flatnonzero(top1 >= 0)
    if len(rows) == 0:
        return 0.0
    sub = evalset if len(rows) == len(evalset) else evalset.subset(rows)
    t = top1[rows]
    if topk.shape[1] >= k + 1:
        before = topk[rows, 1 : k + 1]
    else:
        before = ranked(
            embed(sub.history, sub.dislikes), item_emb, sub.mask_ptr, sub.mask_items, k, 1024, t
        )
    dislikes = np.concatenate(
        [sub.dislikes[:, 1:], (t + 1)[:, None].astype(sub.dislikes.dtype)], axis=1
    )
    after_emb = np.asarray(embed(sub.history, dislikes))
    after = ranked(after_emb, item_emb, sub.mask_ptr, sub.mask_items, k, 1024, t)
    close = neighbors[t]
    n_before = close_count(before, close)
    n_after = close_count(after, close)
    return float((n_after - n_before) / n_before) if n_before else 0.0


def close_count(lists: np.ndarray, close: np.ndarray) -> int:
    """Number of (r, j) with lists[r, j] among close[r] (both ``-1`` padded)."""
    match = (lists[:, :, None] == close[:, None, :]) & (lists[:, :, None] >= 0)
    return int(match.any(axis=2).sum())
