"""The HTTP API in-process (TestClient runs the lifespan): validation, filtering, fallback, degraded mode."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import closed_port, redis_server


def _ids(resp: dict) -> list[str]:
    return [it["item_id"] for it in resp["items"]]


def _event(i: int, user: str, item: str, etype: str) -> dict:
    return {
        "event_id": f"{user}-{item}-{etype}-{i}",
        "user_id": user,
        "item_id": item,
        "type": etype,
    }


def test_recommend_from_request_history(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"history": ["i1", "i2", "i3"], "k": 7})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["items"]) == 7 and len(set(_ids(body))) == 7
    assert body["fallback"] is None and body["degraded"] is False
    assert body["model_version"] == client.get("/v1/model").json()["version"]
    assert not {"i1", "i2", "i3"} & set(_ids(body))  # exclude_seen defaults to true
    scores = [it["score"] for it in body["items"]]
    assert scores == sorted(scores, reverse=True)


def test_request_dislikes_and_exclude_are_filtered_exactly_k(client: TestClient) -> None:
    first = _ids(client.post("/v1/recommend", json={"history": ["i10"], "k": 30}).json())
    dislikes, exclude = first[:10], first[10:25]
    body = client.post(
        "/v1/recommend",
        json={"history": ["i10"], "dislikes": dislikes, "exclude": exclude, "k": 30},
    ).json()
    got = _ids(body)
    assert len(got) == 30 and not set(got) & (set(dislikes) | set(exclude))


def test_exclude_seen_false_may_return_history(client: TestClient) -> None:
    body = client.post(
        "/v1/recommend", json={"history": ["i4"], "k": 5, "exclude_seen": False}
    ).json()
    assert body["items"][0]["item_id"] == "i4"  # an item is its own nearest neighbour


def test_k_is_exact_until_the_catalog_runs_out(client: TestClient) -> None:
    blocked = [f"i{j}" for j in range(290)]  # 300 items, 290 blocked -> 10 remain
    body = client.post(
        "/v1/recommend", json={"history": ["i1"], "exclude": blocked, "k": 50}
    ).json()
    assert sorted(_ids(body)) == sorted(f"i{j}" for j in range(290, 300))
    pop = client.post("/v1/recommend", json={"exclude": blocked, "k": 50}).json()
    assert pop["fallback"] == "popular" and sorted(_ids(pop)) == sorted(
        f"i{j}" for j in range(290, 300)
    )


def test_cold_start_gets_popular_still_filtered(client: TestClient) -> None:
    popular = client.get("/v1/model").json()  # the public manifest hides the list; ask the server
    assert "popular_items" not in popular
    body = client.post("/v1/recommend", json={"user_id": "nobody", "k": 20}).json()
    assert body["fallback"] == "popular" and len(body["items"]) == 20
    top = _ids(body)
    again = client.post(
        "/v1/recommend", json={"user_id": "nobody", "k": 20, "dislikes": top[:5]}
    ).json()
    assert again["fallback"] == "popular" and len(again["items"]) == 20
    assert not set(top[:5]) & set(_ids(again)) and _ids(again)[:15] == top[5:]
    # Only unknown ids in the history: still cold start, and the ids are reported, not a 500.
    unk = client.post("/v1/recommend", json={"history": ["nope-1", "42"], "k": 3}).json()
    assert unk["fallback"] == "popular" and unk["ignored_items"] == ["nope-1", "42"]


def test_events_then_recommend_reads_own_writes(client: TestClient) -> None:
    user = "u-ryw"
    r = client.post(
        "/v1/events",
        json={"events": [_event(0, user, "i1", "click"), _event(0, user, "i2", "like")]},
    )
    assert r.json() == {"accepted": 2, "duplicates": 0}
    body = client.post("/v1/recommend", json={"user_id": user, "k": 10}).json()
    assert body["fallback"] is None and not {"i1", "i2"} & set(_ids(body))
    target = _ids(body)[0]
    r = client.post("/v1/events", json={"events": [_event(0, user, target, "dislike")]})
    assert r.json() == {"accepted": 1, "duplicates": 0}
    for exclude_seen in (True, False):
        after = client.post(
            "/v1/recommend", json={"user_id": user, "k": 10, "exclude_seen": exclude_seen}
        ).json()
        assert target not in _ids(after) and len(after["items"]) == 10
    # Idempotent: the same event ids are counted as duplicates, once each.
    r = client.post(
        "/v1/events",
        json={"events": [_event(0, user, "i1", "click"), _event(0, user, target, "dislike")]},
    )
    assert r.json() == {"accepted": 0, "duplicates": 2}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"k": 0}, "body.k"),
        ({"k": 1001}, "body.k"),
        ({"k": "20"}, "body.k"),
        ({"k": 2.5}, "body.k"),
        ({"k": True}, "body.k"),
        ({"user_id": 5}, "body.user_id"),
        ({"user_id": "a\nb"}, "body.user_id"),
        ({"user_id": "u\u0000"}, "body.user_id"),
        ({"history": [7]}, "body.history.0"),
        ({"history": "i1"}, "body.history"),
        ({"history": [None]}, "body.history.0"),
        ({"history": [""]}, "body.history.0"),
        ({"exclude_seen": "yes"}, "body.exclude_seen"),
        ({"user_id": ["u"]}, "body.user_id"),
        ({"dislike": ["i1"]}, "body.dislike"),
        ([1, 2], "body"),
    ],
)
def test_bad_recommend_input_is_422_naming_the_field(
    client: TestClient, body: object, field: str
) -> None:
    r = client.post("/v1/recommend", json=body)
    assert r.status_code == 422, r.text
    fields = [e["field"] for e in r.json()["errors"]]
    assert field in fields, fields


def test_malformed_json_and_limits(make_client: Callable[..., TestClient]) -> None:
    c = make_client(max_k=50, max_list_length=5, max_body_bytes=4096, max_events=2)
    r = c.post("/v1/recommend", content=b'{"k": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"
    r = c.post("/v1/recommend", json={"k": 51})
    assert r.status_code == 422 and "at most 50" in r.json()["detail"]
    r = c.post("/v1/recommend", json={"history": [f"i{j}" for j in range(6)]})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.history"
    r = c.post(
        "/v1/recommend",
        content=b'{"history": [' + b'"i1",' * 2000 + b'"i1"]}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413 and "4096" in r.json()["detail"]

    def chunks():  # no Content-Length: counted while streamed
        yield b'{"history": ['
        for _ in range(500):
            yield b'"i1", "i2", "i3",'
        yield b'"i1"]}'

    r = c.post("/v1/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    events = [_event(j, "u", "i1", "click") for j in range(3)]
    r = c.post("/v1/events", json={"events": events})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.events"
    assert c.get("/v1/items/i1/similar", params={"k": 51}).status_code == 422
    assert c.get("/healthz").status_code == 200  # still alive


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"user_id": "u", "item_id": "i1", "type": "zap"}, "body.events.1.type"),
        ({"user_id": "u", "item_id": "i1", "type": "click", "ts": 5.0}, "body.events.1.ts"),
        (
            {"user_id": "u", "item_id": "i1", "type": "click", "ts": time.time() * 1000},
            "body.events.1.ts",
        ),
        ({"user_id": "u", "item_id": "i1", "type": "click", "ts": "now"}, "body.events.1.ts"),
        ({"user_id": "", "item_id": "i1", "type": "click"}, "body.events.1.user_id"),
        ({"item_id": "i1", "type": "click"}, "body.events.1.user_id"),
        ({"user_id": "u", "item_id": "i\n1", "type": "click"}, "body.events.1.item_id"),
    ],
)
def test_bad_events_are_422_and_nothing_is_written(
    client: TestClient, event: dict, field: str
) -> None:
    good = _event(0, "u-bad", "i7", "dislike")
    r = client.post("/v1/events", json={"events": [good, event]})
    assert r.status_code == 422, r.text
    assert field in [e["field"] for e in r.json()["errors"]]
    # The valid first event was not written either: the batch is all or nothing.
    assert client.post("/v1/events", json={"events": [good]}).json() == {
        "accepted": 1,
        "duplicates": 0,
    }


def test_similar_items(client: TestClient) -> None:
    body = client.get("/v1/items/i3/similar", params={"k": 299}).json()
    assert len(body["items"]) == 299 and "i3" not in _ids(body)  # the whole catalog but itself
    r = client.get("/v1/items/no-such-item/similar")
    assert r.status_code == 404 and "no-such-item" in r.json()["detail"]
    assert client.get("/v1/items/i3/similar", params={"k": "many"}).status_code == 422


def test_model_health_metrics_and_openapi(client: TestClient) -> None:
    model = client.get("/v1/model").json()
    assert {"version", "embedding_dim", "num_items", "index", "metrics"} <= set(
        model
    ) and "config" not in model
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == model["version"]
    client.post("/v1/recommend", json={"k": 3})
    text = client.get("/metrics").text
    for name in (
        'twotower_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/recommend"',
        'twotower_fallbacks_total{kind="popular"}',
        f'twotower_model_info{{device="cpu",index_type="flat",version="{model["version"]}"}} 1.0',
        "twotower_index_items 300.0",
        "twotower_batch_size_bucket",
    ):
        assert name in text, name
    spec = client.get("/openapi.json").json()
    assert {
        "/v1/recommend",
        "/v1/events",
        "/v1/items/{item_id}/similar",
        "/v1/model",
        "/readyz",
    } <= set(spec["paths"])
    assert spec["components"]["schemas"]["RecommendRequest"]["examples"]
    assert "422" in spec["paths"]["/v1/recommend"]["post"]["responses"]


def test_store_down_answers_degraded_within_the_timeout(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(store_url=f"redis://127.0.0.1:{closed_port()}/0", store_timeout_s=0.3)
    t0 = time.perf_counter()
    r = c.post(
        "/v1/recommend", json={"user_id": "u1", "history": ["i1", "i2"], "dislikes": ["i9"], "k": 5}
    )
    elapsed = time.perf_counter() - t0
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["degraded"] is True and len(body["items"]) == 5 and "i9" not in _ids(body)
    assert elapsed < 0.3 + 1.0, f"degraded answer took {elapsed:.2f}s"
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.json()["store"] == "unreachable"
    t0 = time.perf_counter()
    r = c.post("/v1/events", json={"events": [_event(0, "u1", "i1", "click")]})
    elapsed = time.perf_counter() - t0
    assert r.status_code == 503 and "retry with the same event_id" in r.json()["detail"]
    assert r.headers["retry-after"] == "1"
    assert elapsed < 1.0 + 1.0, f"the 503 took {elapsed:.2f}s (store_write_timeout_s is 1.0)"


def test_no_published_version_is_503_until_one_is(
    make_client: Callable[..., TestClient], tmp_path
) -> None:
    import asyncio

    from tests.serving.artifact_factory import make_artifact

    empty = tmp_path / "empty-art"
    empty.mkdir()
    c = make_client(artifacts=empty)
    r = c.post("/v1/recommend", json={"k": 3})
    assert r.status_code == 503 and "no model loaded" in r.json()["detail"]
    assert c.get("/readyz").status_code == 503
    make_artifact(empty, num_items=40)
    state = c.app.state.twotower
    assert c.portal.call(state.reloader.check_once) is True
    assert c.post("/v1/recommend", json={"k": 3}).status_code == 200
    del asyncio


def test_store_that_comes_back_is_used_again(
    make_client: Callable[..., TestClient], tmp_path
) -> None:
    port = closed_port()
    c = make_client(store_url=f"redis://127.0.0.1:{port}/0", store_timeout_s=0.3)
    assert c.get("/readyz").status_code == 503
    assert c.post("/v1/recommend", json={"user_id": "u1", "k": 3}).json()["degraded"] is True
    with redis_server(tmp_path, port):
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        body = c.post("/v1/recommend", json={"user_id": "u1", "k": 3}).json()
        assert body["degraded"] is False and len(body["items"]) == 3


def test_readyz_fails_and_recommend_is_503_when_the_batcher_is_dead(
    make_client: Callable[..., TestClient],
) -> None:
    import asyncio

    c = make_client()
    state = c.app.state.twotower
    assert c.get("/readyz").json()["batcher"] == "ok"

    async def broken_collect() -> list:  # type: ignore[type-arg]
        raise RuntimeError("collector bug")

    state.batcher._collect = broken_collect  # every restart dies again
    state.batcher.inline_when_idle = False  # the request must reach the collector to kill it
    assert c.post("/v1/recommend", json={"history": ["i1"], "k": 3}).status_code == 200

    async def dead() -> None:
        while state.batcher.alive:
            await asyncio.sleep(0)

    c.portal.call(dead)
    ready = c.get("/readyz")
    assert ready.status_code == 503 and ready.json()["batcher"] == "dead"
    assert "collector bug" in ready.json()["detail"]
    assert c.get("/readyz", params={"store": "optional"}).status_code == 503
    r = c.post("/v1/recommend", json={"history": ["i1"], "k": 3})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "twotower_batcher_restarts_total 5.0" in c.get("/metrics").text
    assert c.get("/healthz").status_code == 200


def test_metrics_include_store_reads_and_process_collectors(client: TestClient) -> None:
    client.post("/v1/recommend", json={"user_id": "u-metrics", "k": 3})
    text = client.get("/metrics").text
    assert 'twotower_store_read_duration_seconds_count{outcome="ok"} 1.0' in text
    for name in ("process_cpu_seconds_total", "python_info", "python_gc_collections_total"):
        assert name in text, name
