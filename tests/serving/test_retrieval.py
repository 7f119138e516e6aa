"""Filtered top-k: blocked rows never come back and k is exact, on every index type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.model import LoadedModel, load_model
from serving.retrieval import WALK_BATCH, Demotion, Query, finish, initial_depth, run_batch
from tests.serving.artifact_factory import make_artifact


@pytest.fixture(scope="module", params=["flat", "ivf", "hnsw"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    d = tmp_path_factory.mktemp(f"ret-{request.param}")
    version = make_artifact(d, num_items=500, dim=16, index_type=request.param, seed=5)
    return load_model(d, version, use_gpu="never")


def _query(model: LoadedModel, k: int, blocked: set[int], seed: int = 0) -> Query:
    rng = np.random.default_rng(seed)
    hist = model.tokens(
        [str(model.item_ids[r]) for r in rng.integers(0, model.num_items, 4)], model.history_length
    )
    return Query(
        model=model,
        k=k,
        blocked=blocked,
        history=hist,
        dislikes=np.zeros(model.dislike_length, np.int32),
    )


def _exact_top(model: LoadedModel, q: Query, k: int) -> list[int]:
    vec = model.embed(q.history[None], q.dislikes[None])[0]
    scores = model.embeddings @ vec
    order = [int(r) for r in np.argsort(-scores, kind="stable") if int(r) not in q.blocked]
    return order[:k]


@pytest.mark.parametrize("k", [1, 10, 100])
def test_unfiltered_matches_exact_on_flat_and_is_close_otherwise(
    model: LoadedModel, k: int
) -> None:
    q = _query(model, k, set())
    (res,) = run_batch([q])
    assert len(res.rows) == k and len(set(res.rows.tolist())) == k
    assert np.all(np.diff(res.scores) <= 1e-6)  # best first
    overlap = len(set(res.rows.tolist()) & set(_exact_top(model, q, k))) / k
    assert overlap >= (1.0 if model.manifest["index"]["type"] == "flat" else 0.5)


def test_heavy_filtering_keeps_exact_k_and_never_returns_blocked(model: LoadedModel) -> None:
    q0 = _query(model, 50, set())
    top = _exact_top(model, q0, 400)
    blocked = set(top[:350])  # the 350 best items are all disliked/excluded
    q = _query(model, 50, blocked)
    (res,) = run_batch([q])
    rows = res.rows.tolist()
    assert len(rows) == 50 and len(set(rows)) == 50
    assert not set(rows) & blocked
    if model.manifest["index"]["type"] == "flat":
        assert rows == _exact_top(model, q, 50)
    assert res.filtered > 0 or res.exact  # blocked rows were among the candidates and dropped


def test_catalog_exhaustion_returns_every_remaining_item(model: LoadedModel) -> None:
    blocked = set(range(0, model.num_items - 7))
    (res,) = run_batch([_query(model, 20, blocked)])
    assert sorted(res.rows.tolist()) == list(range(model.num_items - 7, model.num_items))


def test_everything_blocked_returns_nothing(model: LoadedModel) -> None:
    (res,) = run_batch([_query(model, 5, set(range(model.num_items)))])
    assert len(res.rows) == 0


def test_batched_equals_one_by_one(model: LoadedModel) -> None:
    rng = np.random.default_rng(1)
    queries = [
        _query(
            model,
            int(rng.integers(1, 60)),
            set(rng.integers(0, model.num_items, int(rng.integers(0, 200))).tolist()),
            seed=i,
        )
        for i in range(12)
    ]
    together = run_batch(queries)
    for q, res in zip(queries, together, strict=True):
        (alone,) = run_batch([q])
        assert res.rows.tolist() == alone.rows.tolist()
        assert len(res.rows) == q.k and not set(res.rows.tolist()) & q.blocked


@pytest.mark.parametrize("demotion", [Demotion(), Demotion(weight=3.0, threshold=0.3)])
@pytest.mark.parametrize("batch", [40, 3, 1], ids=["masked", "walked-3", "walked-1"])
def test_batch_filtering_answers_what_finish_answers_query_by_query(
    model: LoadedModel, demotion: Demotion, batch: int
) -> None:
    """run_batch filters a batch at once; each answer is the per-query path's, field for field.

    Batches above ``WALK_BATCH`` are masked at once, smaller ones walked query by query.
    """
    assert (batch > WALK_BATCH) == (batch == 40)
    rng = np.random.default_rng(8)
    queries = []
    for i in range(40):
        blocked = set(rng.integers(0, model.num_items, int(rng.choice([0, 3, 30, 420]))).tolist())
        q = _query(model, int(rng.integers(1, 60)), blocked, seed=i)
        q.demote_rows = np.asarray(sorted(blocked)[:4], np.int64)
        queries.append(q)
    got, wants = [], []
    for chunk in (queries[i : i + batch] for i in range(0, len(queries), batch)):
        got += run_batch(chunk, demotion)
        # The chunk's own tower call and search: the same floats as run_batch's.
        vecs = model.embed(
            np.stack([q.history for q in chunk]), np.stack([q.dislikes for q in chunk])
        )
        depth = min(max(initial_depth(q, demotion) for q in chunk), model.num_items)
        scores, rows = model.search(vecs, depth)
        wants += [
            finish(q, vecs[j], rows[j], scores[j], depth, demotion) for j, q in enumerate(chunk)
        ]
    for res, want in zip(got, wants, strict=True):
        assert res.rows.tolist() == want.rows.tolist()
        assert res.scores.tolist() == want.scores.tolist()  # the same floats, not close ones
        assert (res.filtered, res.searches, res.exact, res.demoted) == (
            want.filtered,
            want.searches,
            want.exact,
            want.demoted,
        )
    assert any(r.searches == 1 and not r.exact for r in got)  # answered from the batch's mask
    assert any(r.filtered for r in got)


def test_soft_demotion_pushes_items_near_dislikes_down(tmp_path: Path) -> None:
    version = make_artifact(tmp_path, num_items=400, dim=8, seed=9)
    model = load_model(tmp_path, version)
    q = _query(model, 20, set(), seed=4)
    (plain,) = run_batch([q])
    disliked = int(
        plain.rows[0]
    )  # dislike the current best item (but do not block it in this check)
    q.demote_rows = np.array([disliked])
    q.blocked = {disliked}
    demotion = Demotion(weight=5.0, threshold=0.5)

    def near(rows: np.ndarray) -> int:
        return int(((model.embeddings[rows] @ model.embeddings[disliked]) > 0.5).sum())

    (undemoted,) = run_batch([q])
    (demoted,) = run_batch([q], demotion)
    assert len(demoted.rows) == 20 and disliked not in demoted.rows.tolist()
    assert near(undemoted.rows) > 0, "fixture: the top-20 should hold items near the disliked one"
    assert near(demoted.rows) < near(undemoted.rows)
    assert demoted.demoted >= near(undemoted.rows) - near(demoted.rows)


def test_filtered_counts_blocked_items_ranked_above_the_last_answer(model: LoadedModel) -> None:
    q0 = _query(model, 30, set(), seed=11)
    ranking = _exact_top(model, q0, model.num_items)
    blocked = set(ranking[:40:2]) | set(ranking[300:320])  # 20 inside the top 50, 20 far below
    (res,) = run_batch([_query(model, 30, blocked, seed=11)])
    if model.manifest["index"]["type"] == "flat":
        last = res.rows.tolist()[-1]
        expected = sum(1 for r in ranking[: ranking.index(last)] if r in blocked)
        assert expected == 20 and res.filtered == expected
    else:
        assert 0 < res.filtered <= len(blocked)
    # Fewer than k left: every blocked item was filtered out of the answer.
    everything_but_5 = set(range(model.num_items - 5))
    (res,) = run_batch([_query(model, 30, everything_but_5, seed=11)])
    assert len(res.rows) == 5 and res.filtered == len(everything_but_5)


def test_popular_fallback_is_exact_k_past_the_end_of_the_popular_list(tmp_path: Path) -> None:
    from serving.service import popular_fallback

    version = make_artifact(tmp_path, num_items=3000, dim=8, seed=2, num_popular=1000)
    model = load_model(tmp_path, version)
    popular = model.popular.tolist()
    assert len(popular) == 1000
    rng = np.random.default_rng(0)
    blocked = set(popular[:900]) | set(rng.choice(3000, 1100, replace=False).tolist())
    rows, scores, filtered = popular_fallback(model, blocked, 1000)
    assert len(rows) == 1000 and len(set(rows)) == 1000 and not set(rows) & blocked
    left_in_popular = [r for r in popular if r not in blocked]
    assert rows[: len(left_in_popular)] == left_in_popular  # popularity order first
    rest = rows[len(left_in_popular) :]
    assert rest == sorted(rest) and all(s == 0.0 for s in scores[len(left_in_popular) :])
    walked = set(popular) | set(range(max(rest) + 1))  # the whole list, then index order
    assert filtered == len(blocked & walked)
    # Exactly what remains when the catalog runs out.
    rows, _, _ = popular_fallback(model, set(range(2990)), 1000)
    assert sorted(rows) == list(range(2990, 3000))


def test_popular_fallback_over_http_keeps_k_with_heavy_exclusions(
    tmp_path: Path, make_client
) -> None:
    art = tmp_path / "art"
    make_artifact(art, num_items=2500, dim=8, seed=4, num_popular=1000)
    c = make_client(artifacts=art)
    first = [x["item_id"] for x in c.post("/v1/recommend", json={"k": 1000}).json()["items"]]
    body = c.post(
        "/v1/recommend", json={"k": 1000, "dislikes": first[:1000:2], "exclude": first[1:1000:2]}
    ).json()
    got = [x["item_id"] for x in body["items"]]
    assert body["fallback"] == "popular" and len(got) == 1000 and len(set(got)) == 1000
    assert not set(got) & set(first)
