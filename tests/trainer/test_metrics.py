"""All-ranking top-K and metrics against brute-force Python loops."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from trainer.data.dataset import EvalSet
from trainer.dislike_metrics import responsiveness
from trainer.metrics import (
    popular_topk,
    ranking_metrics,
    topk_all_ranking,
    write_topk_jsonl,
)
from trainer.reference import cooccurrence_neighbors


def _csr(lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ptr = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
    vals = np.array([i for x in lists for i in x], dtype=np.int32)
    return ptr, vals


def make_evalset(rng: np.random.Generator, u: int, n: int, h: int = 5, d: int = 3) -> EvalSet:
    """Random users: a mask, >= 1 target outside it (duplicates possible), dislikes for some."""
    masks, targets, dislikes = [], [], []
    for _ in range(u):
        perm = rng.permutation(n)
        nm = int(rng.integers(0, n // 2))
        masks.append(sorted(perm[:nm].tolist()))
        nt = int(rng.integers(1, 6))
        t = perm[nm : nm + nt].tolist()
        if rng.random() < 0.2:
            t.append(t[0])  # a duplicated target counts once
        targets.append(t)
        nd = int(rng.integers(0, 4)) if rng.random() < 0.6 else 0
        dislikes.append(perm[nm + nt : nm + nt + nd].tolist())
    tp, ti = _csr(targets)
    mp, mi = _csr(masks)
    dp, di = _csr(dislikes)
    hist = rng.integers(0, n + 1, size=(u, h)).astype(np.int32)
    dis = rng.integers(0, n + 1, size=(u, d)).astype(np.int32)
    return EvalSet(np.arange(u, dtype=np.int32), hist, dis, tp, ti, mp, mi, dp, di)


def brute_topk(scores: np.ndarray, ev: EvalSet, k: int) -> np.ndarray:
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    for r in range(scores.shape[0]):
        masked = set(ev.mask(r).tolist())
        ranked = sorted(
            (-float(scores[r, j]), j) for j in range(scores.shape[1]) if j not in masked
        )
        best = [j for _, j in ranked[:k]]
        out[r, : len(best)] = best
    return out


@pytest.mark.parametrize("ties", [False, True])
def test_topk_matches_brute_force_and_ties_break_by_index(ties: bool) -> None:
    rng = np.random.default_rng(1)
    u, n = 40, 70
    ev = make_evalset(rng, u, n)
    if ties:  # few distinct scores: the order inside and at the cut is all tie-break
        users = rng.integers(0, 2, size=(u, 2)).astype(np.float32)
        items = rng.integers(0, 3, size=(n, 2)).astype(np.float32)
    else:
        users = rng.normal(size=(u, 8)).astype(np.float32)
        items = rng.normal(size=(n, 8)).astype(np.float32)
    got = topk_all_ranking(users, items, ev, k=20)
    want = brute_topk(users.astype(np.float64) @ items.T.astype(np.float64), ev, 20)
    np.testing.assert_array_equal(got, want)
    # Chunking does not change the answer.
    np.testing.assert_array_equal(topk_all_ranking(users, items, ev, k=20, batch_size=3), got)
    for r in range(u):
        assert not set(got[r].tolist()) & set(ev.mask(r).tolist())


def test_topk_pads_when_the_mask_leaves_too_few_items() -> None:
    n = 6
    mp, mi = _csr([[0, 1, 2, 3], []])
    tp, ti = _csr([[4], [5]])
    dp, di = _csr([[], []])
    ev = EvalSet(
        np.arange(2), np.zeros((2, 1), np.int32), np.zeros((2, 1), np.int32), tp, ti, mp, mi, dp, di
    )
    items = np.arange(n, dtype=np.float32)[:, None]
    got = topk_all_ranking(np.ones((2, 1), np.float32), items, ev, k=4)
    np.testing.assert_array_equal(got, [[5, 4, -1, -1], [5, 4, 3, 2]])


def test_topk_collapsed_scores_rank_by_index() -> None:
    """Every score equal (a collapsed model): the list is the unmasked items in index order."""
    rng = np.random.default_rng(2)
    ev = make_evalset(rng, 12, 60)
    got = topk_all_ranking(np.ones((12, 4), np.float32), np.ones((60, 4), np.float32), ev, k=15)
    for r in range(12):
        masked = set(ev.mask(r).tolist())
        np.testing.assert_array_equal(got[r], [i for i in range(60) if i not in masked][:15])


def test_topk_refuses_bad_input() -> None:
    rng = np.random.default_rng(0)
    ev = make_evalset(rng, 4, 10)
    items = rng.normal(size=(10, 3)).astype(np.float32)
    users = rng.normal(size=(4, 3)).astype(np.float32)
    users[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        topk_all_ranking(users, items, ev)
    with pytest.raises(ValueError, match="rows"):
        topk_all_ranking(users[:3], items, ev)
    with pytest.raises(ValueError, match="mask items"):
        topk_all_ranking(np.ones((4, 3), np.float32), items[:5], ev)


def brute_metrics(topk: np.ndarray, ev: EvalSet, counts: np.ndarray) -> dict:
    n = len(counts)
    out: dict = {}
    for kk in (10, 20, 50):
        rec, ndcg, hr = [], [], []
        for r in range(len(ev)):
            t = set(ev.targets(r).tolist())
            lst = [i for i in topk[r, :kk].tolist()]
            hits = [1.0 if i in t else 0.0 for i in lst]
            rec.append(sum(hits) / len(t))
            hr.append(1.0 if sum(hits) else 0.0)
            dcg = sum(h / math.log2(j + 2) for j, h in enumerate(hits))
            idcg = sum(1 / math.log2(j + 2) for j in range(min(len(t), kk)))
            ndcg.append(dcg / idcg)
        out[f"recall@{kk}"] = float(np.mean(rec))
        out[f"ndcg@{kk}"] = float(np.mean(ndcg))
        out[f"hit_rate@{kk}"] = float(np.mean(hr))
    out["coverage@20"] = len({i for row in topk[:, :20].tolist() for i in row if i >= 0}) / n
    rates = []
    for r in range(len(ev)):
        d = set(ev.heldout_dislikes(r).tolist())
        if d:
            rates.append(len(d & set(topk[r, :20].tolist())) / len(d))
    out["dislike_rate@20"] = float(np.mean(rates)) if rates else 0.0
    out["num_users_with_dislikes"] = len(rates)
    # Long tail: stable ascending popularity order, 10 groups of (nearly) equal item count.
    order = sorted(range(n), key=lambda i: (counts[i], i))
    sizes = [n // 10 + (1 if g < n % 10 else 0) for g in range(10)]
    group, start = {}, 0
    for g, s in enumerate(sizes):
        for i in order[start : start + s]:
            group[i] = g
        start += s
    hits_g, tgt_g = [0] * 10, [0] * 10
    for r in range(len(ev)):
        top = set(topk[r, :20].tolist())
        for t in set(ev.targets(r).tolist()):
            tgt_g[group[t]] += 1
            hits_g[group[t]] += t in top
    out["longtail_recall@20"] = [h / t if t else 0.0 for h, t in zip(hits_g, tgt_g, strict=True)]
    out["num_users"] = len(ev)
    return out


def test_ranking_metrics_match_brute_force() -> None:
    rng = np.random.default_rng(7)
    u, n = 60, 123
    ev = make_evalset(rng, u, n)
    users = rng.normal(size=(u, 4)).astype(np.float32)
    items = rng.normal(size=(n, 4)).astype(np.float32)
    topk = topk_all_ranking(users, items, ev, k=50)
    counts = rng.integers(0, 20, size=n)
    got = ranking_metrics(topk, ev, counts)
    want = brute_metrics(topk, ev, counts)
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-12, atol=1e-12, err_msg=name)
    assert got["num_users_with_dislikes"] > 0 and got["dislike_rate@20"] >= 0.0
    # The metric code must also see hits: a perfect ranking (targets first) scores 1.
    perfect = np.full((u, 50), -1, dtype=np.int64)
    for r in range(u):
        t = np.unique(ev.targets(r))
        perfect[r, : len(t)] = t
    best = ranking_metrics(perfect, ev, counts)
    assert best["recall@10"] == pytest.approx(1.0) and best["ndcg@10"] == pytest.approx(1.0)


def test_metrics_without_dislikes_and_short_lists() -> None:
    rng = np.random.default_rng(3)
    ev = make_evalset(rng, 10, 40)
    ev.dislike_ptr = np.zeros(11, np.int64)
    ev.dislike_items = np.zeros(0, np.int32)
    topk = topk_all_ranking(rng.normal(size=(10, 3)), rng.normal(size=(40, 3)), ev, k=20)
    got = ranking_metrics(topk, ev, np.ones(40, np.int64))
    assert got["dislike_rate@20"] == 0.0 and got["num_users_with_dislikes"] == 0
    assert "recall@50" not in got and "recall@20" in got and len(got["longtail_recall@20"]) == 10


def test_popular_topk_respects_masking_and_matches_ranking() -> None:
    rng = np.random.default_rng(5)
    u, n = 30, 50
    ev = make_evalset(rng, u, n)
    counts = rng.integers(0, 6, size=n)  # many ties: broken by index
    got = popular_topk(counts, ev, k=20)
    np.testing.assert_array_equal(
        got, brute_topk(np.tile(counts, (u, 1)).astype(np.float64), ev, 20)
    )
    same = topk_all_ranking(
        np.ones((u, 1), np.float32), counts[:, None].astype(np.float32), ev, k=20
    )
    np.testing.assert_array_equal(got, same)


def _two_clusters(n_per: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Items 0..n_per-1 around (1, 0), the rest around (0, 1); each item's neighbours = its cluster."""
    rng = np.random.default_rng(0)
    a = np.stack([np.ones(n_per), rng.uniform(0, 0.2, n_per)], axis=1)
    b = np.stack([rng.uniform(0, 0.2, n_per), np.ones(n_per)], axis=1)
    items = np.concatenate([a, b]).astype(np.float32)
    n = len(items)
    nb = np.full((n, 50), -1, dtype=np.int32)
    for i in range(n):
        same = [j for j in range(n) if j != i and (j < n_per) == (i < n_per)]
        nb[i, : len(same)] = same
    return items, nb


def test_responsiveness_known_answers() -> None:
    items, nb = _two_clusters()
    n = len(items)
    u = 8
    ev = EvalSet(
        np.arange(u, dtype=np.int32),
        np.ones((u, 3), np.int32),
        np.zeros((u, 4), np.int32),
        np.arange(u + 1, dtype=np.int64),
        np.full(u, 40, np.int32),
        np.zeros(u + 1, np.int64),
        np.zeros(0, np.int32),
        np.zeros(u + 1, np.int64),
        np.zeros(0, np.int32),
    )
    seen: list[np.ndarray] = []

    def moving(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        """Leans to cluster A; a dislike of an A item turns the user fully to cluster B."""
        seen.append(dislikes.copy())
        last = dislikes[:, -1]
        away = (last > 0) & (last - 1 < 30)
        return np.where(away[:, None], [[0.0, 1.0]], [[1.0, 0.3]]).astype(np.float32)

    def ignoring(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        return np.tile(np.float32([[1.0, 0.3]]), (len(history), 1))

    topk = topk_all_ranking(moving(ev.history, ev.dislikes), items, ev, k=50)
    assert (topk[:, 0] < 30).all()  # top-1 is in cluster A; the next 20 too
    # Before: 20 close items per user; after: none -> exactly -1.
    assert responsiveness(moving, items, ev, topk, nb, k=20) == -1.0
    # The dislike input got t + 1 as its most recent token, the rest shifted left.
    np.testing.assert_array_equal(seen[-1][:, -1], topk[:, 0] + 1)
    np.testing.assert_array_equal(seen[-1][:, :-1], ev.dislikes[:, 1:])
    assert responsiveness(ignoring, items, ev, topk, nb, k=20) == 0.0
    # Re-ranking path (topk too short to read "before" from) gives the same answers.
    assert responsiveness(moving, items, ev, topk[:, :5], nb, k=20) == -1.0
    assert responsiveness(ignoring, items, ev, topk[:, :5], nb, k=20) == 0.0
    no_dislike_input = EvalSet(**{**ev.__dict__, "dislikes": np.zeros((u, 0), np.int32)})
    assert responsiveness(moving, items, no_dislike_input, topk, nb, k=20) == 0.0
    # Nothing close before (no neighbours at all) -> 0.0, not a division by zero.
    assert responsiveness(moving, items, ev, topk, np.full((n, 50), -1, np.int32), k=20) == 0.0


def test_responsiveness_partial_move_is_exact() -> None:
    """A user who turns halfway: count close items before/after by hand."""
    items, nb = _two_clusters()
    ev = EvalSet(
        np.arange(1, dtype=np.int32),
        np.ones((1, 2), np.int32),
        np.zeros((1, 2), np.int32),
        np.array([0, 1]),
        np.array([45], np.int32),
        np.array([0, 0]),
        np.zeros(0, np.int32),
        np.array([0, 0]),
        np.zeros(0, np.int32),
    )

    def embed(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        v = [1.0, 0.0] if dislikes[0, -1] == 0 else [1.0, 1.0]
        return np.float32([v])

    topk = topk_all_ranking(embed(ev.history, ev.dislikes), items, ev, k=50)
    t = int(topk[0, 0])
    close = set(nb[t][nb[t] >= 0].tolist())
    before = len(close & set(topk[0, 1:21].tolist()))
    after_list = topk_all_ranking(np.float32([[1.0, 1.0]]), items, ev, k=50)[0]
    after = len(close & set([i for i in after_list.tolist() if i != t][:20]))
    assert before == 20 and after < before
    assert responsiveness(embed, items, ev, topk, nb, k=20) == pytest.approx(
        (after - before) / before
    )


def test_write_topk_jsonl_round_trip(tmp_path) -> None:
    topk = np.array([[2, 0, -1], [1, 2, 0]])
    path = tmp_path / "topk.jsonl"
    write_topk_jsonl(path, ["u1", "u2"], topk, np.array(["a", "b", "c"]))
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines == [
        {"user_id": "u1", "items": ["c", "a"]},
        {"user_id": "u2", "items": ["b", "c", "a"]},
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["topk.jsonl"]
    with pytest.raises(ValueError):
        write_topk_jsonl(path, ["u1"], topk, np.array(["a", "b", "c"]))


def dense_neighbors(
    users: np.ndarray, items: np.ndarray, n: int, m: int
) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((users.max() + 1, n))
    x[users, items] = 1.0
    co = x.T @ x
    norm = np.sqrt(np.diag(co))
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.nan_to_num(co / np.outer(norm, norm))
    return cos, norm


def test_cooccurrence_neighbors_match_dense() -> None:
    rng = np.random.default_rng(11)
    n, m = 25, 6
    users = rng.integers(0, 40, size=300)
    items = np.minimum(rng.zipf(1.6, size=300) - 1, n - 3)  # items n-2, n-1 never seen
    got = cooccurrence_neighbors(users, items, n, m=m)
    cos, _ = dense_neighbors(users, items, n, m)
    assert got.shape == (n, m) and got.dtype == np.int32
    for i in range(n):
        cand = [j for j in range(n) if j != i and cos[i, j] > 0]
        want = sorted(cand, key=lambda j: (-cos[i, j], j))[:m]
        row = got[i][got[i] >= 0].tolist()
        assert len(row) == len(want), i
        assert i not in row
        # Same similarity profile (float32 vs float64 may only reorder exact ties).
        np.testing.assert_allclose(cos[i, row], cos[i, want], rtol=1e-5)
    assert (got[n - 1] == -1).all()


def test_cooccurrence_ties_and_duplicates() -> None:
    # Users 0-2 each hold items 0 and 1; user 3 holds items 0, 2, 3 (twice for 3).
    users = np.array([0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    items = np.array([0, 1, 0, 1, 0, 1, 0, 2, 3, 3])
    got = cooccurrence_neighbors(users, items, 5, m=4)
    # cos(0,1) = 3/sqrt(4*3); cos(0,2) = cos(0,3) = 1/2 (tie, by index); item 4 unseen.
    np.testing.assert_array_equal(got[0], [1, 2, 3, -1])
    np.testing.assert_array_equal(got[2], [3, 0, -1, -1])
    np.testing.assert_array_equal(got[4], [-1, -1, -1, -1])
    with pytest.raises(ValueError, match="item_idx"):
        cooccurrence_neighbors(users, items, 3)
