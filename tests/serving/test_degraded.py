"""Degraded mode: the store hangs or dies, acknowledged dislikes stay filtered (invariant 1 of docs/CONTRACT.md).

Every test starts its own ``redis-server`` on a free port and SIGSTOPs (hung:
connections open, no answers) or SIGKILLs (refused) it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import RedisProcess, redis_server
from tests.serving.server import running_server


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


def _events(user: str, pairs: list[tuple[str, str]], tag: str) -> dict:
    return {
        "events": [
            {"event_id": f"{tag}-{user}-{j}", "user_id": user, "item_id": item, "type": etype}
            for j, (item, etype) in enumerate(pairs)
        ]
    }


def _store_dislike(url: str, user: str, item: str) -> None:
    """A dislike written by someone else (another pod, ingest): this server only reads it."""
    from feature_store import open_store
    from feature_store.events import make_event

    async def write() -> None:
        async with open_store(url) as store:
            await store.append_events(
                [
                    make_event(
                        {
                            "event_id": f"other-{user}-{item}",
                            "user_id": user,
                            "item_id": item,
                            "type": "dislike",
                        }
                    )
                ]
            )

    asyncio.run(write())


@pytest.fixture
def redis_proc(tmp_path: Path):
    with redis_server(tmp_path) as proc:
        yield proc


def test_dislikes_stay_filtered_while_the_store_hangs_and_after_it_dies(
    make_client: Callable[..., TestClient], redis_proc: RedisProcess
) -> None:
    c = make_client(store_url=redis_proc.url, store_timeout_s=0.2, store_write_timeout_s=0.5)
    user, history = "u-deg", ["i1", "i2"]
    assert (
        c.post("/v1/events", json=_events(user, [(h, "click") for h in history], "c")).status_code
        == 200
    )
    top = _ids(c.post("/v1/recommend", json={"user_id": user, "k": 10}).json())
    # top[0]: disliked through this server; top[1]: by another writer, read once by this server.
    assert c.post("/v1/events", json=_events(user, [(top[0], "dislike")], "d")).status_code == 200
    _store_dislike(redis_proc.url, user, top[1])
    live = c.post("/v1/recommend", json={"user_id": user, "k": 10}).json()
    assert live["degraded"] is False and not {top[0], top[1]} & set(_ids(live))
    # A cold user whose only event is a dislike of the most popular item.
    popular_top = _ids(c.post("/v1/recommend", json={"k": 5}).json())[0]
    cold = "u-cold"
    assert (
        c.post("/v1/events", json=_events(cold, [(popular_top, "dislike")], "d")).status_code == 200
    )

    redis_proc.stop()
    try:
        for _ in range(3):
            body = c.post(
                "/v1/recommend", json={"user_id": user, "history": history, "k": 10}
            ).json()
            assert body["degraded"] is True and len(body["items"]) == 10
            assert not {top[0], top[1]} & set(_ids(body)), _ids(body)
        # The request alone would have ranked them first: the cache is what filtered them.
        anon = _ids(c.post("/v1/recommend", json={"history": history, "k": 10}).json())
        assert anon[:2] == top[:2]
        body = c.post("/v1/recommend", json={"user_id": cold, "k": 5}).json()
        assert body["degraded"] is True and body["fallback"] == "popular"
        assert popular_top not in _ids(body) and len(body["items"]) == 5
        # Unknown to this process: answered from the request alone, marked degraded.
        body = c.post("/v1/recommend", json={"user_id": "u-never-seen", "k": 4}).json()
        assert body["degraded"] is True and len(body["items"]) == 4
        # Writes: a bounded 503 that says the outcome is unknown and when to retry.
        t0 = time.perf_counter()
        r = c.post("/v1/events", json=_events(user, [(top[2], "dislike")], "late"))
        elapsed = time.perf_counter() - t0
        assert r.status_code == 503 and "outcome unknown" in r.json()["detail"]
        assert r.headers["retry-after"] == "1" and elapsed < 0.5 + 1.0, elapsed
        # ... and that dislike is filtered by this server from the moment it was sent.
        body = c.post("/v1/recommend", json={"user_id": user, "history": history, "k": 10}).json()
        assert top[2] not in _ids(body)
        assert c.get("/readyz").status_code == 503
        optional = c.get("/readyz", params={"store": "optional"})
        assert optional.status_code == 200 and optional.json()["store"] == "unreachable"
        metrics = c.get("/metrics").text
        assert 'twotower_degraded_user_lookups_total{known="complete"}' in metrics
        assert 'twotower_degraded_user_lookups_total{known="none"} 1.0' in metrics
        assert 'twotower_store_read_duration_seconds_count{outcome="timeout"}' in metrics
    finally:
        redis_proc.cont()

    redis_proc.kill()  # now refused outright: the same answers
    body = c.post("/v1/recommend", json={"user_id": user, "history": history, "k": 10}).json()
    assert body["degraded"] is True and not {top[0], top[1], top[2]} & set(_ids(body))
    # A refused connection: the store knows nothing was applied, and says so.
    r = c.post("/v1/events", json=_events(user, [(top[3], "dislike")], "refused"))
    assert r.status_code == 503 and "nothing was written" in r.json()["detail"], r.json()


def test_refuse_policy_answers_503_for_users_this_server_does_not_know(
    make_client: Callable[..., TestClient], redis_proc: RedisProcess
) -> None:
    c = make_client(store_url=redis_proc.url, store_timeout_s=0.2, degraded_unknown_users="refuse")
    assert c.post("/v1/events", json=_events("known", [("i3", "click")], "c")).status_code == 200
    assert c.post("/v1/recommend", json={"user_id": "known", "k": 3}).json()["degraded"] is False
    redis_proc.kill()
    known = c.post("/v1/recommend", json={"user_id": "known", "k": 3})
    assert known.status_code == 200 and known.json()["degraded"] is True
    r = c.post("/v1/recommend", json={"user_id": "stranger", "k": 3})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "stranger" in r.json()["detail"]
    # A dislike this server only wrote (never read the user's full state) is not enough.
    c.post("/v1/events", json=_events("half", [("i4", "dislike")], "d"))
    assert c.post("/v1/recommend", json={"user_id": "half", "k": 3}).status_code == 503
    # No user_id: nothing to read, nothing degraded.
    anon = c.post("/v1/recommend", json={"history": ["i3"], "k": 3})
    assert anon.status_code == 200 and anon.json()["degraded"] is False


@pytest.mark.slow
def test_e2e_dislike_then_redis_stopped_then_killed(art: Path, tmp_path: Path) -> None:
    """A real ``twotower serve`` process and a real Redis that hangs, then dies."""
    with (
        redis_server(tmp_path) as redis_proc,
        running_server(art, redis_proc.url, TWOTOWER_SERVE__STORE_TIMEOUT_S="0.2") as srv,
        httpx.Client(base_url=srv.url, timeout=10) as c,
    ):
        user, history = "e2e-deg", ["i5", "i6"]
        c.post("/v1/events", json=_events(user, [(h, "click") for h in history], "c"))
        top = _ids(c.post("/v1/recommend", json={"user_id": user, "k": 10}).json())
        r = c.post("/v1/events", json=_events(user, [(top[0], "dislike")], "d"))
        assert r.json() == {"accepted": 1, "duplicates": 0}
        for stop in (redis_proc.stop, redis_proc.kill):
            stop()
            for _ in range(10):
                body = c.post(
                    "/v1/recommend", json={"user_id": user, "history": history, "k": 10}
                ).json()
                assert body["degraded"] is True and len(body["items"]) == 10
                assert top[0] not in _ids(body)
            assert c.get("/readyz").status_code == 503
            assert c.get("/readyz?store=optional").status_code == 200
            if stop == redis_proc.stop:
                redis_proc.cont()


def test_the_kubernetes_readiness_probe_keeps_a_pod_with_redis_down_in_service(
    make_client: Callable[..., TestClient],
) -> None:
    import yaml

    from tests.serving.conftest import closed_port

    manifest = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "api-deployment.yaml"
    (container,) = yaml.safe_load(manifest.read_text())["spec"]["template"]["spec"]["containers"]
    probe_path = container["readinessProbe"]["httpGet"]["path"]
    c = make_client(store_url=f"redis://127.0.0.1:{closed_port()}/0", store_timeout_s=0.2)
    # docs/CONTRACT.md: ready = model loaded *and* store reachable.
    assert c.get("/readyz").status_code == 503
    ready = c.get(probe_path)
    assert ready.status_code == 200, (probe_path, ready.text)
    assert ready.json()["store"] == "unreachable"
