"""Soft demotion reacts to the dislikes the served version never saw (``demote_dislikes``).

A version's manifest says the newest event it was trained from
(``data.time_range.max``). With ``demote_dislikes=fresh`` (the default) serving
demotes items near the user's dislikes stamped after it, and near the request's
own dislikes; older dislikes are still filtered, and the version has learned from
them. ``recent`` demotes near the latest dislikes whatever their age. Each answer
is checked against one query through the serving retrieval code with the
demotion rows each mode documents.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serving.artifact_factory import make_artifact

THROUGH = 1_700_000_000.0  # the version's newest training event (Nov 2023)
WEIGHT, THRESHOLD = 5.0, 0.3
HISTORY = ["i1", "i2", "i3", "i4", "i5", "i6"]


def _post(client: TestClient, user: str, item: str, kind: str, ts: float, n: int) -> None:
    event = {"event_id": f"{user}-{n}", "user_id": user, "item_id": item, "type": kind, "ts": ts}
    r = client.post("/v1/events", json={"events": [event]})
    assert r.status_code == 200, r.text


def _items(client: TestClient, body: dict[str, Any]) -> list[str]:
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 200, r.text
    return [x["item_id"] for x in r.json()["items"]]


def _reference(client: TestClient, disliked: list[str], demote: list[str], k: int) -> list[str]:
    """One query through serving's retrieval code with ``demote`` as the demotion rows."""
    from serving.retrieval import Demotion, Query, run_batch

    model = client.app.state.twotower.holder.current  # type: ignore[attr-defined]
    index = model.id_to_index
    q = Query(
        model=model,
        k=k,
        blocked={index[x] for x in [*HISTORY, *disliked]},
        history=model.tokens(HISTORY, model.history_length),
        dislikes=model.tokens(disliked, model.dislike_length),
        demote_rows=np.asarray([index[x] for x in demote], np.int64),
    )
    (res,) = run_batch([q], Demotion(WEIGHT, THRESHOLD))
    return [model.id_list[r] for r in res.rows.tolist()]


@pytest.fixture
def timed_art(tmp_path: Path) -> Path:
    make_artifact(tmp_path, num_items=300, dim=16, seed=3, clusters=6, trained_through=THROUGH)
    return tmp_path


def _user(client: TestClient, user: str, old: str, fresh: str) -> None:
    for n, item in enumerate(HISTORY):
        _post(client, user, item, "click", THROUGH - 5000 + n, n)
    _post(client, user, old, "dislike", THROUGH - 10, 10)  # trained on
    _post(client, user, fresh, "dislike", THROUGH + 10, 11)  # after the version's data


def test_fresh_mode_demotes_near_new_dislikes_only(
    timed_art: Path, make_client: Callable[..., TestClient]
) -> None:
    off = make_client(artifacts=timed_art)
    top = _items(off, {"history": HISTORY, "k": 20})
    model = off.app.state.twotower.holder.current  # type: ignore[attr-defined]
    vec = {x: model.embeddings[model.id_to_index[x]] for x in top}
    # Two of the user's best items, the farthest apart: demoting near each moves
    # different items.
    old = top[0]
    fresh = min(top[1:], key=lambda x: float(vec[x] @ vec[old]))
    k = 20
    answers = {}
    for mode in ("fresh", "recent"):
        client = make_client(
            artifacts=timed_art,
            demote_weight=WEIGHT,
            demote_threshold=THRESHOLD,
            demote_dislikes=mode,
        )
        _user(client, "u1", old, fresh)
        answers[mode] = _items(client, {"user_id": "u1", "k": k})
        demote = [fresh] if mode == "fresh" else [old, fresh]
        assert answers[mode] == _reference(client, [old, fresh], demote, k), mode
        assert old not in answers[mode] and fresh not in answers[mode]
        # The request's own dislikes were never trained on: fresh in both modes.
        extra = next(x for x in top if x not in (old, fresh))
        got = _items(client, {"user_id": "u1", "k": k, "dislikes": [extra]})
        assert got == _reference(client, [old, fresh, extra], [*demote, extra], k), mode
    plain = _reference(off, [old, fresh], [], k)
    # The three modes give three different lists: each demotion row moved something.
    assert answers["fresh"] != plain
    assert answers["fresh"] != answers["recent"]


def test_without_times_every_dislike_counts_as_fresh(
    art: Path, make_client: Callable[..., TestClient]
) -> None:
    # The session artifact's manifest has no data.time_range (a source without times).
    client = make_client(artifacts=art, demote_weight=WEIGHT, demote_threshold=THRESHOLD)
    assert client.app.state.twotower.holder.current.trained_through is None  # type: ignore[attr-defined]
    top = _items(client, {"history": HISTORY, "k": 10})
    _user(client, "u2", top[0], top[1])
    got = _items(client, {"user_id": "u2", "k": 20})
    assert got == _reference(client, [top[0], top[1]], [top[0], top[1]], 20)


def test_trained_through_reads_the_manifest_time_range() -> None:
    from serving.model import trained_through

    assert trained_through({"data": {"time_range": {"max": 12.5, "min": 1.0}}}) == 12.5
    assert trained_through({"data": {"time_range": {"max": 7, "min": 1}}}) == 7.0
    for manifest in (
        {},
        {"data": None},
        {"data": {"time_range": None}},
        {"data": {"time_range": {"max": "soon"}}},
        {"data": {"time_range": {"max": True}}},
        {"data": {"time_range": {"max": float("nan")}}},
    ):
        assert trained_through(manifest) is None, manifest
