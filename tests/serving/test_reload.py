"""Hot reload in-process: swap on publish, in-flight work stays on its version, old versions released."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from serving.retrieval import Query
from tests.serving.artifact_factory import make_artifact
from twotower import artifacts


def test_publish_swaps_and_old_version_finishes_and_is_released(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    art = tmp_path / "art"
    v1 = make_artifact(art, num_items=120, prefix="a", seed=1)
    c = make_client(artifacts=art)
    state = c.app.state.twotower
    body = c.post("/v1/recommend", json={"history": ["a1"], "k": 5}).json()
    assert body["model_version"] == v1 and all(x["item_id"].startswith("a") for x in body["items"])

    old = state.holder.current
    assert c.portal.call(state.reloader.check_once) is False  # nothing new published

    v2 = make_artifact(art, num_items=80, prefix="b", seed=2)
    assert c.portal.call(state.reloader.check_once) is True
    assert state.holder.current.version == v2
    body = c.post("/v1/recommend", json={"history": ["b1"], "k": 5}).json()
    assert body["model_version"] == v2 and all(x["item_id"].startswith("b") for x in body["items"])
    # An "a" id is unknown to the new version: ignored and reported, cold start.
    body = c.post("/v1/recommend", json={"history": ["a1"], "k": 5}).json()
    assert body["ignored_items"] == ["a1"] and body["fallback"] == "popular"

    # A request that took the old version before the swap still finishes on it.
    q = Query(
        model=old,
        k=5,
        history=old.tokens(["a1"], old.history_length),
        dislikes=np.zeros(old.dislike_length, np.int32),
    )
    res = c.portal.call(state.batcher.submit, q)
    finished_on_old = len(res.rows) == 5 and all(
        str(old.item_ids[r]).startswith("a") for r in res.rows
    )
    assert finished_on_old

    # Once nobody holds it, the old version is freed.
    ref = weakref.ref(old)
    del old, q, res
    gc.collect()
    leaked = ref() is not None
    assert not leaked, "the replaced version is still referenced"
    assert f'version="{v2}"' in c.get("/metrics").text


def test_broken_new_version_keeps_serving_the_old_one(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    art = tmp_path / "art"
    v1 = make_artifact(art, num_items=60, seed=1)
    c = make_client(artifacts=art)
    state = c.app.state.twotower
    v2 = make_artifact(art, num_items=60, seed=2)
    (artifacts.version_dir(art, v2) / artifacts.INDEX).write_bytes(b"not a faiss index")
    assert c.portal.call(state.reloader.check_once) is False
    assert state.holder.current.version == v1 and v2 in state.holder.last_error
    assert c.post("/v1/recommend", json={"history": ["i1"], "k": 3}).json()["model_version"] == v1
    assert 'twotower_model_reloads_total{outcome="failed"} 1.0' in c.get("/metrics").text
    # Not retried on every poll; a fixed, newer version is picked up.
    assert c.portal.call(state.reloader.check_once) is False
    v3 = make_artifact(art, num_items=60, seed=3)
    assert c.portal.call(state.reloader.check_once) is True and state.holder.current.version == v3
