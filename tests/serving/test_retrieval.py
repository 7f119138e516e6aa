"""Filtered top-k: blocked rows never come back and k is exact, on every index type."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serving.model import LoadedModel, load_model
from serving.retrieval import Demotion, Query, run_batch
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
