"""``serve.direct_recommend``: the direct ``/v1/recommend`` answers what the FastAPI route answers.

Two apps on the same artifact and store, one with the direct path (the default)
and one without; every request is sent to both and the status, body and
content type compared byte for byte. Well-formed requests must be answered by
the direct path (its counter moves); every other request must reach the app
(it does not).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fastapi import HTTPException
from fastapi.testclient import TestClient

from serving import direct
from serving.batcher import BatcherClosed
from serving.direct import DirectRecommend


def _direct(client: TestClient) -> DirectRecommend:
    """The app's DirectRecommend instance (the middleware stack is built on the first request)."""
    node: Any = client.app.middleware_stack  # type: ignore[attr-defined]
    while node is not None and not isinstance(node, DirectRecommend):
        node = getattr(node, "app", None)
    assert node is not None, "no DirectRecommend in the app's middleware stack"
    return node


@pytest.fixture
def pair(make_client: Callable[..., TestClient]) -> tuple[TestClient, TestClient]:
    on = make_client()
    off = make_client(direct_recommend=False)
    assert on.get("/healthz").status_code == 200  # builds the middleware stack
    with pytest.raises(AssertionError, match="no DirectRecommend"):
        _direct(off)
    return on, off


def _same(pair: tuple[TestClient, TestClient], **request: Any) -> Any:
    on, off = pair
    a = on.post("/v1/recommend", **request)
    b = off.post("/v1/recommend", **request)
    assert (a.status_code, a.content) == (b.status_code, b.content), request
    assert a.headers.get("content-type") == b.headers.get("content-type")
    assert a.headers.get("retry-after") == b.headers.get("retry-after")
    return a


WELL_FORMED: list[dict[str, Any]] = [
    {"history": ["i1", "i2", "i3"]},
    {"history": ["i1", "i2"], "dislikes": ["i4", "i5"], "k": 7, "exclude": ["i6"]},
    {"history": ["i9", "i8"], "exclude_seen": False, "k": 1},
    {"history": ["i1", "nope"], "dislikes": ["nope-either"], "k": 290},
    {"user_id": "d-u1", "k": 5},
    {"user_id": "d-u1", "history": ["i30"], "exclude_seen": False},
    {"user_id": "unknown-user"},
    {"k": 4},
    {},
]


def test_well_formed_requests_are_answered_directly_and_alike(
    pair: tuple[TestClient, TestClient],
) -> None:
    on, _off = pair
    events = [
        {"event_id": f"e{j}", "user_id": "d-u1", "item_id": f"i{j}", "type": t}
        for j, t in enumerate(["click", "click", "dislike", "like", "impression"] * 3)
    ]
    assert on.post("/v1/events", json={"events": events}).status_code == 200
    before = _direct(on).answered
    for body in WELL_FORMED:
        r = _same(pair, json=body)
        assert r.status_code == 200, r.text
        assert len(r.json()["items"]) == body.get("k", 20)
    assert _direct(on).answered == before + len(WELL_FORMED)
    # Read-your-writes and the dislike filter hold on the direct path.
    dislikes = {e["item_id"] for e in events if e["type"] == "dislike"}
    got = {
        x["item_id"]
        for x in on.post("/v1/recommend", json={"user_id": "d-u1", "k": 299}).json()["items"]
    }
    assert not got & dislikes


@pytest.mark.parametrize(
    "request_",
    [
        {"content": b"", "headers": {"content-type": "application/json"}},
        {"content": b"null", "headers": {"content-type": "application/json"}},
        {"content": b"[1, 2]", "headers": {"content-type": "application/json"}},
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b'{"k": 5}', "headers": {"content-type": "text/plain"}},
        {"content": b'{"k": 5}'},
        {"content": b"\xff\xfe{}", "headers": {"content-type": "application/json"}},
        {"json": {"k": 0}},
        {"json": {"k": 100000}},
        {"json": {"k": "many"}},
        {"json": {"history": "i1"}},
        {"json": {"history": ["i1"], "colour": "red"}},
        {"json": {"history": [f"i{j % 300}" for j in range(5000)]}},
        {"json": {"exclude_seen": "yes"}},
        {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
    ],
    ids=lambda r: json.dumps(r, default=lambda b: b[:20].decode("latin-1"))[:60],
)
def test_every_other_request_is_the_apps_answer(
    pair: tuple[TestClient, TestClient], request_: dict[str, Any]
) -> None:
    on, _off = pair
    before = _direct(on).answered
    _same(pair, **request_)
    assert _direct(on).answered == before


def test_other_methods_and_paths_pass_through(pair: tuple[TestClient, TestClient]) -> None:
    on, off = pair
    before = _direct(on).answered
    for method, path in [
        ("GET", "/v1/recommend"),
        ("PUT", "/v1/recommend"),
        ("POST", "/v1/recommend/"),
        ("GET", "/v1/items/i1/similar?k=3"),
    ]:
        a, b = on.request(method, path), off.request(method, path)
        assert (a.status_code, a.content) == (b.status_code, b.content), (method, path)
    assert _direct(on).answered == before


@pytest.mark.parametrize(
    "exc",
    [
        HTTPException(503, "online store unavailable", headers={"Retry-After": "2"}),
        BatcherClosed("stopped"),
    ],
    ids=["http-exception", "batcher-closed"],
)
def test_an_error_while_answering_gets_the_apps_handler(
    pair: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch, exc: Exception
) -> None:
    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise exc

    # Both paths call serving.service.recommend; the failure is injected in that one place.
    monkeypatch.setattr(direct.service, "recommend", failing)
    on, _off = pair
    before = _direct(on).answered
    r = _same(pair, json={"history": ["i1"]})
    assert r.status_code == 503
    assert _direct(on).answered == before + 1


def test_an_unexpected_error_is_the_apps_500(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(direct.service, "recommend", failing)
    answers = []
    for on in (True, False):
        client = make_client(direct_recommend=on)
        client_500 = TestClient(client.app, raise_server_exceptions=False)
        r = client_500.post("/v1/recommend", json={"history": ["i1"]})
        answers.append((r.status_code, r.json()))
    assert answers[0] == answers[1]
    assert answers[0][0] == 500


def test_direct_answers_are_timed_under_the_route_template(
    pair: tuple[TestClient, TestClient],
) -> None:
    on, _off = pair
    for _ in range(3):
        assert on.post("/v1/recommend", json={"history": ["i1"]}).status_code == 200
    text = on.get("/metrics").text
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("twotower_http_request_duration_seconds_count")
        and 'route="/v1/recommend"' in ln
        and 'status="200"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) >= 3
