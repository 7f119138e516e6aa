"""Hot reload in-process: swap on publish, in-flight work stays on its version, old versions
released by reference counting, failed loads retried with backoff."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from common import artifacts
from serving.reload import retry_delay
from serving.retrieval import Query
from tests.serving.artifact_factory import make_artifact


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

    # Once nobody holds it, the old version is freed, by reference counting alone: the
    # reloader runs no gc.collect() (a 150-250 ms pause of the event loop).
    ref, saved_ref = weakref.ref(old), weakref.ref(old._saved)
    gc.disable()
    try:
        del old, q, res
        # One more query through the single worker thread: it has let go of the last one.
        c.post("/v1/recommend", json={"history": ["b2"], "k": 1})
        leaked = ref() is not None or saved_ref() is not None
    finally:
        gc.enable()
    assert not leaked, "the replaced version (or its SavedModel) is still referenced"
    assert f'version="{v2}"' in c.get("/metrics").text


def _serving_v1_then_broken_v2(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> tuple[Path, TestClient, str, str]:
    """A client serving v1 after LATEST moved to v2, whose index is not a FAISS index."""
    art = tmp_path / "art"
    v1 = make_artifact(art, num_items=60, seed=1)
    c = make_client(artifacts=art)
    assert c.get("/readyz").json()["detail"] is None
    v2 = make_artifact(art, num_items=60, seed=2)
    (artifacts.version_dir(art, v2) / artifacts.INDEX).write_bytes(b"not a faiss index")
    assert c.portal.call(c.app.state.twotower.reloader.check_once) is False
    return art, c, v1, v2


def test_broken_new_version_keeps_serving_the_old_one(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    art, c, v1, v2 = _serving_v1_then_broken_v2(make_client, tmp_path)
    state = c.app.state.twotower
    assert state.holder.current.version == v1 and v2 in state.holder.last_error
    assert c.post("/v1/recommend", json={"history": ["i1"], "k": 3}).json()["model_version"] == v1
    assert 'twotower_model_reloads_total{outcome="failed"} 1.0' in c.get("/metrics").text
    # Not retried on every poll; a fixed, newer version is picked up.
    assert c.portal.call(state.reloader.check_once) is False
    v3 = make_artifact(art, num_items=60, seed=3)
    assert c.portal.call(state.reloader.check_once) is True and state.holder.current.version == v3


def test_readyz_says_the_published_version_failed_and_a_rollback_clears_it(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    art, c, v1, v2 = _serving_v1_then_broken_v2(make_client, tmp_path)
    state = c.app.state.twotower
    ready = c.get("/readyz")
    # Still ready: the last good version answers; the detail names both.
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert v1 in ready.json()["detail"] and v2 in ready.json()["detail"]
    artifacts.publish(art, v1)  # rollback: LATEST names what is served again
    assert c.portal.call(state.reloader.check_once) is False
    assert c.get("/readyz").json()["detail"] is None and state.holder.last_error is None


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n, 2.0, 30.0) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_failed_load_is_retried_with_backoff_until_it_works(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    """A transient failure (file not there yet, NFS blip, GPU OOM) heals without a new LATEST."""
    art = tmp_path / "art"
    v1 = make_artifact(art, num_items=60, seed=1)
    c = make_client(artifacts=art, reload_poll_s=1.0, reload_retry_max_s=4.0)
    state = c.app.state.twotower
    now = [1000.0]
    state.reloader.clock = lambda: now[0]
    v2 = make_artifact(art, num_items=60, seed=2, publish=False)
    index = artifacts.version_dir(art, v2) / artifacts.INDEX
    index.rename(index.with_suffix(".away"))
    artifacts.publish(art, v2)

    def check() -> bool:
        return bool(c.portal.call(state.reloader.check_once))

    def failures() -> float:
        line = next(
            x
            for x in c.get("/metrics").text.splitlines()
            if x.startswith('twotower_model_reloads_total{outcome="failed"}')
        )
        return float(line.split()[-1])

    attempts = []
    for step in (0.0, 0.5, 0.6, 1.9, 0.2):  # attempts at t=0, 1.1 (+1 s), 3.2 (+2 s)
        now[0] += step
        assert check() is False
        attempts.append(failures())
    assert attempts == [1.0, 1.0, 2.0, 2.0, 3.0]
    assert state.holder.current.version == v1 and v2 in state.holder.last_error
    text = c.get("/metrics").text
    assert "twotower_model_stale 1.0" in text
    assert f'twotower_model_published_info{{version="{v2}"}} 1.0' in text
    assert f'version="{v1}"}} 1.0' in text  # still serving v1

    index.with_suffix(".away").rename(index)  # the problem goes away; LATEST is unchanged
    now[0] += 4.0  # the backoff is capped at reload_retry_max_s
    assert check() is True and state.holder.current.version == v2
    assert state.holder.last_error is None
    text = c.get("/metrics").text
    assert "twotower_model_stale 0.0" in text and failures() == 3.0
    assert f'version="{v2}"}} 1.0' in text and f'version="{v1}"}} 0.0' in text
