"""The HTTP contract as the OpenAPI document states it: types, limits, content types, bodies."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from common import artifacts
from tests.serving.artifact_factory import make_artifact


def _ids(resp: dict) -> list[str]:
    return [it["item_id"] for it in resp["items"]]


def test_openapi_limits_are_the_configured_ones_and_the_server_enforces_them(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(max_k=40, default_k=7, max_list_length=3, max_events=2)
    spec = c.get("/openapi.json").json()
    req = spec["components"]["schemas"]["RecommendRequest"]["properties"]
    k_int = next(b for b in req["k"]["anyOf"] if b.get("type") == "integer")
    assert (k_int["minimum"], k_int["maximum"], req["k"]["default"]) == (1, 40, 7)
    assert {req[n]["maxItems"] for n in ("history", "dislikes", "exclude")} == {3}
    events = spec["components"]["schemas"]["EventsRequest"]["properties"]["events"]
    assert events["maxItems"] == 2
    (k_param,) = [
        p
        for p in spec["paths"]["/v1/items/{item_id}/similar"]["get"]["parameters"]
        if p["name"] == "k"
    ]
    k_q = next(b for b in k_param["schema"]["anyOf"] if b.get("type") == "integer")
    assert (k_q["maximum"], k_param["schema"]["default"]) == (40, 7)
    # The server agrees at each boundary: the schema's maximum passes, one more is a 422.
    ok = c.post("/v1/recommend", json={"history": ["i1"] * 3, "k": 40})
    assert ok.status_code == 200 and len(ok.json()["items"]) == 40
    assert c.post("/v1/recommend", json={"k": 41}).status_code == 422
    assert c.post("/v1/recommend", json={"exclude": ["i1"] * 4}).status_code == 422
    assert len(c.post("/v1/recommend", json={}).json()["items"]) == 7  # the default k
    assert len(c.get("/v1/items/i3/similar").json()["items"]) == 7
    assert c.get("/v1/items/i3/similar", params={"k": 41}).status_code == 422
    ev = [{"user_id": "u", "item_id": "i1", "type": "view"}]
    assert c.post("/v1/events", json={"events": ev * 2}).status_code == 200
    assert c.post("/v1/events", json={"events": ev * 3}).status_code == 422


def test_event_type_is_an_enum_the_server_matches(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    enum = spec["components"]["schemas"]["EventIn"]["properties"]["type"]["enum"]
    assert "dislike" in enum and "click" in enum
    for etype in enum:
        r = client.post(
            "/v1/events", json={"events": [{"user_id": "u-enum", "item_id": "i2", "type": etype}]}
        )
        assert r.status_code == 200, (etype, r.text)
    r = client.post(
        "/v1/events", json={"events": [{"user_id": "u", "item_id": "i2", "type": "zap"}]}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.events.0.type"


def test_k_is_an_integer_in_the_json_schema_sense(client: TestClient) -> None:
    body = client.post("/v1/recommend", json={"history": ["i1"], "k": 39.0})
    assert body.status_code == 200 and len(body.json()["items"]) == 39
    for bad in (39.5, True, "39", float("inf")):
        payload = json.dumps({"history": ["i1"], "k": bad}, allow_nan=True)
        r = client.post(
            "/v1/recommend", content=payload, headers={"content-type": "application/json"}
        )
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.k", bad


def test_ids_are_strict_strings_with_the_event_rules(client: TestClient) -> None:
    r = client.post("/v1/recommend", json={"user_id": "x" * 257})
    assert r.status_code == 422
    assert "256 characters" in r.json()["errors"][0]["message"], r.text
    r = client.post("/v1/recommend", json={"user_id": 5})
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.user_id"
    r = client.post(
        "/v1/events", json={"events": [{"user_id": 5, "item_id": "i1", "type": "click"}]}
    )
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body.events.0.user_id"
    # The same id rules on both routes: NUL and newline refused with the same message.
    rec = client.post("/v1/recommend", json={"user_id": "a\nb"}).json()["errors"][0]
    ev = client.post(
        "/v1/events", json={"events": [{"user_id": "a\nb", "item_id": "i1", "type": "click"}]}
    ).json()["errors"][0]
    assert rec["message"] == ev["message"] and "newline" in rec["message"]


@pytest.mark.parametrize(
    ("route", "body"),
    [("/v1/recommend", b'{"history": ["i1"]}'), ("/v1/events", b'{"events": []}')],
)
@pytest.mark.parametrize("content_type", ["text/plain", None, "application/x-www-form-urlencoded"])
def test_a_body_not_sent_as_json_is_415(
    client: TestClient, route: str, body: bytes, content_type: str | None
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    r = client.post(route, content=body, headers=headers)
    assert r.status_code == 415, r.text
    assert (
        "application/json" in r.json()["detail"] and r.json()["error"] == "unsupported_media_type"
    )
    ok = client.post(
        "/v1/recommend", content=b"{}", headers={"content-type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200


def test_empty_body_gets_the_popular_list(client: TestClient) -> None:
    empty = client.post("/v1/recommend")
    assert empty.status_code == 200, empty.text
    braces = client.post("/v1/recommend", json={})
    assert empty.json()["fallback"] == "popular" and len(empty.json()["items"]) == 20
    assert _ids(empty.json()) == _ids(braces.json())
    # /v1/events has a required body: empty is a 422 naming it.
    r = client.post("/v1/events")
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "body"


def test_documented_statuses_are_the_ones_each_route_can_answer(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def codes(path: str, method: str) -> set[str]:
        return set(paths[path][method]["responses"])

    assert codes("/v1/recommend", "post") == {"200", "400", "413", "415", "422", "503"}
    assert codes("/v1/events", "post") == {"200", "400", "413", "415", "422", "503"}
    assert codes("/v1/items/{item_id}/similar", "get") == {"200", "404", "422", "503"}
    assert codes("/v1/model", "get") == {"200", "503"}
    assert codes("/readyz", "get") == {"200", "422", "503"}
    model_schema = paths["/v1/model"]["get"]["responses"]["200"]["content"]["application/json"]
    assert model_schema["schema"] == {"$ref": "#/components/schemas/ModelResponse"}
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in (
        "RecommendResponse",
        "EventsResponse",
        "SimilarResponse",
        "ModelResponse",
        "HealthResponse",
        "ErrorResponse",
        "ScoredItem",
    ):
        assert schemas[name].get("examples"), f"{name} has no example"


def test_model_endpoint_with_non_finite_metrics_is_valid_json(
    make_client: Callable[..., TestClient], tmp_path: Path
) -> None:
    art = tmp_path / "art"
    version = make_artifact(art, num_items=30, publish=False)
    path = artifacts.version_dir(art, version) / artifacts.MANIFEST
    manifest = json.loads(path.read_text())
    manifest["metrics"]["dislike_rate@20"] = math.nan
    path.write_text(json.dumps(manifest))
    artifacts.publish(art, version)
    r = make_client(artifacts=art).get("/v1/model")
    assert r.status_code == 200 and "NaN" not in r.text
    body = json.loads(r.text)  # strict JSON parse would fail on NaN
    assert body["metrics"]["dislike_rate@20"] is None and body["serving"]["device"] == "cpu"


def test_event_ts_minimum_in_the_schema_is_the_servers(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    minimum = spec["components"]["schemas"]["EventIn"]["properties"]["ts"]["minimum"]

    def post(ts: float) -> int:
        ev = {"user_id": "u-ts", "item_id": "i1", "type": "view", "ts": ts}
        return client.post("/v1/events", json={"events": [ev]}).status_code

    assert (post(minimum), post(minimum - 1)) == (200, 422)
