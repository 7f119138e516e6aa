"""Every limit the server enforces on the POST routes is stated in /openapi.json.

The walk: for each enforced limit, a request at the limit and one just past it
(or breaking the rule) go to the server and through a JSON Schema validator
built from the served document. A request the schema accepts must be
accepted, and one the server refuses must be refused by the schema, except
for the one limit JSON Schema has no keyword for, which the document states
as an extension: the body size in bytes (``x-max-body-bytes``). An event
``ts`` far ahead of the server's clock is accepted and recorded as the
receive time (the schema's static maximum refuses milliseconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jsonschema
import pytest
from fastapi.testclient import TestClient

from feature_store.events import EVENT_TYPES, MAX_FUTURE_SKEW_S, MAX_ID_LENGTH, MIN_TS
from serving.openapi import MAX_BODY_BYTES_KEY
from serving.schemas import MAX_TS, TS_AHEAD_KEY

#: Non-default limits, so the document cannot pass by showing the defaults or the hard caps.
LIMITS = {"max_k": 40, "default_k": 7, "max_list_length": 3, "max_events": 2}
BODY_BYTES = 4096
POSTS = ("/v1/recommend", "/v1/events")


@dataclass(frozen=True)
class Probe:
    """One request body; ``ok`` is whether the server accepts it (200) or refuses it (422)."""

    what: str
    route: str
    body: Any
    ok: bool


def _ev(**fields: Any) -> dict[str, Any]:
    return {"user_id": "u-limits", "item_id": "i1", "type": "view", **fields}


def _events(*events: dict[str, Any]) -> dict[str, Any]:
    return {"events": list(events)}


LONGEST = "x" * MAX_ID_LENGTH
TOO_LONG = "x" * (MAX_ID_LENGTH + 1)
#: MAX_ID_LENGTH characters that are 2 UTF-16 units each: the limit counts characters.
LONGEST_ASTRAL = "\U0001f600" * MAX_ID_LENGTH
BAD_IDS = {"empty": "", "too long": TOO_LONG, "newline": "a\nb", "CR": "a\rb", "NUL": "a\x00b"}

REC = "/v1/recommend"
EVT = "/v1/events"
n, k_max = LIMITS["max_list_length"], LIMITS["max_k"]

PROBES: list[Probe] = [
    Probe("null body", REC, None, True),
    Probe("empty object", REC, {}, True),
    Probe("unknown field", REC, {"dislike": ["i1"]}, False),
    Probe("k = 1", REC, {"k": 1}, True),
    Probe("k = max_k", REC, {"k": k_max}, True),
    Probe("k = max_k as 40.0", REC, {"k": float(k_max)}, True),
    Probe("k = null", REC, {"k": None}, True),
    Probe("k = 0", REC, {"k": 0}, False),
    Probe("k = max_k + 1", REC, {"k": k_max + 1}, False),
    Probe("k = 2.5", REC, {"k": 2.5}, False),
    Probe("k = '5'", REC, {"k": "5"}, False),
    Probe("k = true", REC, {"k": True}, False),
    Probe("exclude_seen = false", REC, {"exclude_seen": False}, True),
    Probe("exclude_seen = 'no'", REC, {"exclude_seen": "no"}, False),
    Probe("user_id longest", REC, {"user_id": LONGEST}, True),
    Probe("user_id longest astral", REC, {"user_id": LONGEST_ASTRAL}, True),
    Probe("user_id null", REC, {"user_id": None}, True),
    Probe("user_id a number", REC, {"user_id": 5}, False),
    *[Probe(f"user_id {name}", REC, {"user_id": v}, False) for name, v in BAD_IDS.items()],
    *[
        probe
        for field in ("history", "dislikes", "exclude")
        for probe in (
            Probe(f"{field} at max_list_length", REC, {field: [LONGEST] * n}, True),
            Probe(f"{field} past max_list_length", REC, {field: ["i1"] * (n + 1)}, False),
            Probe(f"{field} null", REC, {field: None}, False),
            *[Probe(f"{field} id {name}", REC, {field: [v]}, False) for name, v in BAD_IDS.items()],
        )
    ],
    Probe("one event", EVT, _events(_ev()), True),
    Probe("max_events events", EVT, _events(*[_ev()] * LIMITS["max_events"]), True),
    Probe("no events", EVT, _events(), False),
    Probe("max_events + 1 events", EVT, _events(*[_ev()] * (LIMITS["max_events"] + 1)), False),
    Probe("events null", EVT, {"events": None}, False),
    Probe("body null", EVT, None, False),
    Probe("unknown event field", EVT, _events(_ev(when=1)), False),
    *[Probe(f"type {t}", EVT, _events(_ev(type=t)), True) for t in sorted(EVENT_TYPES)],
    Probe("type unknown", EVT, _events(_ev(type="zap")), False),
    Probe("event_id null", EVT, _events(_ev(event_id=None)), True),
    *[
        probe
        for field in ("event_id", "user_id", "item_id")
        for probe in (
            Probe(f"{field} longest", EVT, _events(_ev(**{field: LONGEST})), True),
            Probe(f"{field} longest astral", EVT, _events(_ev(**{field: LONGEST_ASTRAL})), True),
            *[
                Probe(f"{field} {name}", EVT, _events(_ev(**{field: v})), False)
                for name, v in BAD_IDS.items()
            ],
        )
    ],
    Probe("user_id missing", EVT, _events({"item_id": "i1", "type": "view"}), False),
    Probe("ts null", EVT, _events(_ev(ts=None)), True),
    Probe("ts minimum", EVT, _events(_ev(ts=MIN_TS)), True),
    Probe("ts an integer", EVT, _events(_ev(ts=int(MIN_TS) + 1)), True),
    Probe("ts below minimum", EVT, _events(_ev(ts=MIN_TS - 1)), False),
    Probe("ts maximum", EVT, _events(_ev(ts=MAX_TS)), True),
    Probe("ts above maximum", EVT, _events(_ev(ts=MAX_TS + 1)), False),
    Probe("ts a string", EVT, _events(_ev(ts="1767225600")), False),
    Probe("ts true", EVT, _events(_ev(ts=True)), False),
]


@pytest.fixture
def limited(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(**LIMITS, max_body_bytes=BODY_BYTES)


def _body_validator(spec: dict[str, Any], route: str) -> jsonschema.Draft202012Validator:
    """A validator for ``route``'s request body, ``$ref``s resolved in the served document."""
    schema = spec["paths"][route]["post"]["requestBody"]["content"]["application/json"]["schema"]
    root = {**schema, "components": spec["components"]}
    jsonschema.Draft202012Validator.check_schema(root)
    return jsonschema.Draft202012Validator(root)


def _post(client: TestClient, route: str, body: Any) -> int:
    content = json.dumps(body).encode()
    assert len(content) <= BODY_BYTES, "probe larger than the body limit under test"
    return client.post(
        route, content=content, headers={"content-type": "application/json"}
    ).status_code


def test_every_enforced_limit_is_stated_in_the_schema(limited: TestClient) -> None:
    spec = limited.get("/openapi.json").json()
    validators = {route: _body_validator(spec, route) for route in POSTS}
    disagreements = []
    for probe in PROBES:
        status = _post(limited, probe.route, probe.body)
        assert status in (200, 422), (probe.what, status)
        schema_ok = validators[probe.route].is_valid(probe.body)
        if (status == 200) != probe.ok or schema_ok != probe.ok:
            disagreements.append(f"{probe.what}: server {status}, schema valid={schema_ok}")
    assert disagreements == []


def test_event_ts_ahead_of_the_clock_is_recorded_at_receive_time(limited: TestClient) -> None:
    """Every schema-valid ts is accepted: JSON Schema cannot bound a ts by the server's clock,
    so the schema bounds it statically (2000..2100) and a ts too far ahead of the clock is
    recorded as the receive time, reported in ``ts_adjusted`` (the extension and the
    description say so)."""
    ts = limited.get("/openapi.json").json()["components"]["schemas"]["EventIn"]["properties"]["ts"]
    ahead = ts[TS_AHEAD_KEY]
    assert ahead == MAX_FUTURE_SKEW_S
    assert f"more than {ahead:.0f} s ahead of the server's clock" in ts["description"]
    assert ts["minimum"] == MIN_TS and ts["maximum"] == MAX_TS
    now = time.time()
    near = limited.post("/v1/events", json=_events(_ev(ts=now + ahead - 30)))
    assert near.status_code == 200 and "ts_adjusted" not in near.json()
    before = time.time()
    far = limited.post(
        "/v1/events", json=_events(_ev(event_id="e-far", ts=now + 86400), _ev(ts=now))
    )
    assert far.status_code == 200, far.text
    (adjusted,) = far.json()["ts_adjusted"]
    assert adjusted["index"] == 0 and adjusted["sent"] == now + 86400
    assert before <= adjusted["recorded"] <= time.time()
    assert _post(limited, EVT, _events(_ev(ts=MAX_TS))) == 200
    assert _post(limited, EVT, _events(_ev(ts=now * 1000))) == 422  # milliseconds, not seconds


def test_body_limit_in_bytes_is_stated_on_every_post(limited: TestClient) -> None:
    spec = limited.get("/openapi.json").json()
    posts = [(path, item["post"]) for path, item in spec["paths"].items() if "post" in item]
    assert {path for path, _ in posts} == set(POSTS)
    for path, op in posts:
        body = op["requestBody"]
        assert body[MAX_BODY_BYTES_KEY] == BODY_BYTES, path
        assert f"At most {BODY_BYTES} bytes" in body["description"], path
        too_large = op["responses"]["413"]
        assert f"larger than {BODY_BYTES} bytes" in too_large["description"], path
        assert too_large["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorResponse"
        }
        # The server's limit is the stated one: valid JSON padded to the limit passes, one more byte is 413.
        base = b'{"events": [{"user_id": "u", "item_id": "i1", "type": "view"}]}'
        base = base if path == EVT else b"{}"
        headers = {"content-type": "application/json"}
        at_limit = base + b" " * (BODY_BYTES - len(base))
        assert limited.post(path, content=at_limit, headers=headers).status_code == 200, path
        over = limited.post(path, content=at_limit + b" ", headers=headers)
        assert over.status_code == 413 and str(BODY_BYTES) in over.json()["detail"], path


def test_default_body_limit_is_stated(client: TestClient) -> None:
    from serving.settings import Settings

    default = Settings.model_fields["max_body_bytes"].default
    spec = client.get("/openapi.json").json()
    for route in POSTS:
        assert spec["paths"][route]["post"]["requestBody"][MAX_BODY_BYTES_KEY] == default
