"""Soft demotion's per-version threshold (``demote_near``).

A version's threshold is the item-item similarity that a ``near`` share of its
item pairs exceed, so a dislike reaches about as far into every version's
catalogue whatever scale its training gave the vectors. Checked: the quantile on
hand-made vectors, the sample against every pair, the scale it follows, what the
server resolves and shows, and that an absolute threshold still wins.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.model import load_model, pair_similarity_quantile
from serving.retrieval import Demotion, Query, demotion_penalty, run_batch
from serving.settings import DEMOTE_NEAR, DEMOTE_WEIGHT
from tests.serving.artifact_factory import make_artifact


def test_quantile_of_distinct_pairs_by_hand() -> None:
    # Four items on the axes of 2-D space, of different lengths: cosines between
    # distinct items are 0 except (0, 1) = 1 and (2, 3) = -1 (both orders).
    emb = np.array([[1, 0], [2, 0], [0, 3], [0, -4]], np.float32)
    # 12 ordered pairs: 8 zeros, two 1s, two -1s. Self pairs (cosine 1) left out.
    assert pair_similarity_quantile(emb, 1.0) == pytest.approx(1.0)
    assert pair_similarity_quantile(emb, 0.0) == pytest.approx(-1.0)
    assert pair_similarity_quantile(emb, 0.5) == 0.0
    # Linear interpolation at 9.5 of sorted positions 0..11: halfway from the last 0 to the first 1.
    assert pair_similarity_quantile(emb, 9.5 / 11) == pytest.approx(0.5)
    assert pair_similarity_quantile(emb, 8.5 / 11) == 0.0  # the self pairs would have moved it


def test_fewer_than_two_items_have_no_near_items() -> None:
    assert pair_similarity_quantile(np.ones((1, 4), np.float32), 0.99) == math.inf
    assert pair_similarity_quantile(np.ones((0, 4), np.float32), 0.99) == math.inf


def test_sample_is_seeded_and_close_to_every_pair() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3000, 16)).astype(np.float32)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    exact = float(np.quantile(sims[~np.eye(len(emb), dtype=bool)], 0.99))
    sampled = pair_similarity_quantile(emb, 0.99, anchors=256, others=2048)
    assert sampled == pair_similarity_quantile(emb, 0.99, anchors=256, others=2048)
    assert sampled != pair_similarity_quantile(emb, 0.99, anchors=256, others=2048, seed=1)
    assert sampled == pytest.approx(exact, rel=0.03)
    # A cosine: the vectors' lengths do not move it.
    longer = emb * rng.uniform(0.5, 3.0, size=(len(emb), 1)).astype(np.float32)
    assert pair_similarity_quantile(longer, 0.99, anchors=256, others=2048) == pytest.approx(
        sampled, abs=1e-5
    )


def test_threshold_is_the_version_own_unless_absolute(tmp_path: Path) -> None:
    model = load_model(tmp_path, make_artifact(tmp_path, num_items=300, dim=8, seed=2, clusters=5))
    near = model.near_similarity(0.01)
    assert near == pair_similarity_quantile(model.embeddings, 0.99)
    share = float(np.mean((model.embeddings @ model.embeddings.T)[~np.eye(300, dtype=bool)] > near))
    assert share == pytest.approx(0.01, abs=0.002)  # 300 items: every pair was counted
    assert Demotion(1.0, None, 0.01).threshold_for(model) == near
    assert Demotion(1.0).threshold_for(model) == model.near_similarity(DEMOTE_NEAR) < near
    assert Demotion(1.0, 0.25).threshold_for(model) == 0.25


def test_demotion_with_the_version_threshold_demotes_its_near_items(tmp_path: Path) -> None:
    model = load_model(tmp_path, make_artifact(tmp_path, num_items=400, dim=8, seed=9, clusters=8))
    rng = np.random.default_rng(4)
    history = np.zeros(model.history_length, np.int32)
    history[-5:] = rng.choice(model.num_items, 5, replace=False) + 1
    query = Query(
        model=model, k=20, history=history, dislikes=np.zeros(model.dislike_length, np.int32)
    )
    (plain,) = run_batch([query])
    disliked = int(plain.rows[0])
    query.blocked, query.demote_rows = {disliked}, np.array([disliked])
    threshold = model.near_similarity(0.05)

    def near(rows: np.ndarray) -> int:
        return int((model.embeddings[rows] @ model.embeddings[disliked] > threshold).sum())

    (undemoted,) = run_batch([query])
    (demoted,) = run_batch([query], Demotion(5.0, None, 0.05))
    assert near(undemoted.rows) > 0, "fixture: the top-20 should hold items near the disliked one"
    assert near(demoted.rows) < near(undemoted.rows)
    assert len(demoted.rows) == 20
    # Counted: the items of the list without demotion that it pushed out of the top 20.
    pushed_out = set(undemoted.rows.tolist()) - set(demoted.rows.tolist())
    assert demoted.demoted == len(pushed_out) > 0


def test_penalty_is_in_the_score_units_of_a_dot_export(tmp_path: Path) -> None:
    unit = load_model(tmp_path, make_artifact(tmp_path, num_items=200, dim=8, seed=6, clusters=4))
    assert unit.unit_length
    rng = np.random.default_rng(2)
    lengths = rng.uniform(0.5, 4.0, size=200).astype(np.float32)
    dot = dataclasses.replace(unit, embeddings=unit.embeddings * lengths[:, None])
    assert not dot.unit_length
    vec = rng.normal(size=8).astype(np.float32)
    rows, near = np.arange(0, 200, 3), np.array([5, 77])
    setting = Demotion(0.7, 0.2)
    got = demotion_penalty(dot, vec, rows, near, setting)
    assert got is not None
    # By hand: the largest cosine with a dislike, over 0.2, times 0.7 |u| |i|.
    emb = dot.embeddings
    for at, row in enumerate(rows):
        cos = max(
            float(emb[row] @ emb[d]) / float(np.linalg.norm(emb[row]) * np.linalg.norm(emb[d]))
            for d in near
        )
        want = 0.7 * max(0.0, cos - 0.2) * float(np.linalg.norm(vec) * lengths[row])
        assert got[at] == pytest.approx(want, rel=1e-4, abs=1e-6)
    assert (got > 0).any() and (got == 0).any()
    # Unit vectors: the cosines are the inner products and |u| |i| is |u|.
    plain = demotion_penalty(unit, vec, rows, near, setting)
    assert plain is not None
    np.testing.assert_allclose(plain * lengths[rows], got, rtol=1e-4, atol=1e-6)
    # Nothing near: nothing taken.
    assert demotion_penalty(unit, vec, rows, near, Demotion(0.7, 1.0)) is None


@pytest.fixture
def clustered(tmp_path: Path) -> Path:
    make_artifact(tmp_path, num_items=300, dim=16, seed=3, clusters=6)
    return tmp_path


def _model_info(client: TestClient) -> dict[str, Any]:
    r = client.get("/v1/model")
    assert r.status_code == 200, r.text
    return r.json()["serving"]


def test_server_resolves_and_shows_the_threshold(
    clustered: Path, make_client: Callable[..., TestClient]
) -> None:
    on = make_client(artifacts=clustered, demote_weight=0.5, demote_near=0.02)
    model = on.app.state.twotower.holder.current  # type: ignore[attr-defined]
    assert model.demote_threshold == pytest.approx(model.near_similarity(0.02))
    assert _model_info(on)["demote_threshold"] == pytest.approx(model.demote_threshold)
    absolute = make_client(artifacts=clustered, demote_weight=0.5, demote_threshold=0.4)
    assert _model_info(absolute)["demote_threshold"] == pytest.approx(0.4)
    off = make_client(artifacts=clustered, demote_weight=0.0)
    assert _model_info(off)["demote_threshold"] is None


def test_a_new_dislike_demotes_by_default(
    clustered: Path, make_client: Callable[..., TestClient]
) -> None:
    """With no demotion setting, a request's dislike moves the list beyond filtering it."""
    client = make_client(artifacts=clustered)
    model = client.app.state.twotower.holder.current  # type: ignore[attr-defined]
    emb = model.embeddings
    # A history inside one cluster and a dislike from it: the tower stays near the
    # cluster (the fixture's tower subtracts half the dislike), so its list still
    # holds items near the dislike for demotion to move.
    closest = np.argsort(-(emb @ emb[0])).tolist()
    history = [model.id_list[r] for r in closest[:5]]
    disliked = model.id_list[closest[5]]

    def served(body: dict[str, Any]) -> list[str]:
        r = client.post("/v1/recommend", json=body)
        assert r.status_code == 200, r.text
        return [x["item_id"] for x in r.json()["items"]]

    def reference(demotion: Demotion) -> list[str]:
        index = model.id_to_index
        q = Query(
            model=model,
            k=20,
            blocked={index[x] for x in [*history, disliked]},
            history=model.tokens(history, model.history_length),
            dislikes=model.tokens([disliked], model.dislike_length),
            demote_rows=np.asarray([index[disliked]], np.int64),
        )
        (res,) = run_batch([q], demotion)
        return [model.id_list[r] for r in res.rows.tolist()]

    got = served({"history": history, "dislikes": [disliked], "k": 20})
    assert got == reference(Demotion(DEMOTE_WEIGHT, None, DEMOTE_NEAR))
    assert got != reference(Demotion())  # more than the dislike filtered out
    metrics = client.get("/metrics").text
    (line,) = [x for x in metrics.splitlines() if x.startswith("twotower_demoted_items_total ")]
    assert float(line.split()[1]) > 0
