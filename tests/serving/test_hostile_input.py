"""Hostile requests: deep and huge JSON, NaN/Infinity literals, unicode and control characters,
ids shaped like paths or Redis key syntax, over-long batches and repeated event ids.

Every answer is a clear 4xx (or a 200 that is right), never a 5xx; memory stays bounded
by the body limit; an id never reaches a file name or the structure of a Redis key.
"""

from __future__ import annotations

import json
import re
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving.conftest import redis_url

JSON = {"content-type": "application/json"}
REC, EVT = "/v1/recommend", "/v1/events"


def post(c: TestClient, route: str, body: bytes) -> Any:
    return c.post(route, content=body, headers=JSON)


def check_error(r: Any, status: int, *needles: str) -> dict[str, Any]:
    """A JSON error body of ``status`` whose detail mentions every needle."""
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()
    assert set(body) == {"error", "detail", "errors"} and body["detail"]
    for needle in needles:
        assert needle in body["detail"], (needle, body["detail"])
    return body


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 900_000,  # near the 1 MB body limit
        b'{"history":' * 90_000,
        b'{"history":' + b"[" * 5_000 + b"]" * 5_000 + b"}",  # deep but well-formed
        b'{"user_id": {"a": ' * 50_000 + b"1" + b"}" * 50_000,
    ],
    ids=["open-arrays", "open-objects", "closed-arrays", "closed-objects"],
)
@pytest.mark.parametrize("route", [REC, EVT])
def test_deeply_nested_json_is_a_400_naming_the_depth(
    client: TestClient, route: str, body: bytes
) -> None:
    check_error(post(client, route, body), 400, "nested too deeply")


def test_huge_arrays_are_refused_by_length_with_one_error_and_bounded_memory(
    client: TestClient,
) -> None:
    cases = [
        (REC, {"history": [1] * 300_000}, "body.history", "at most 10000"),
        (REC, {"exclude": ["i1"] * 12_000}, "body.exclude", "at most 10000"),
        (REC, {"dislikes": ["i1"] * 5_000}, "body.dislikes", "at most 1000"),  # the setting
        (EVT, {"events": [{"user_id": 1}] * 60_000}, "body.events", "at most 10000"),
        (
            EVT,
            {"events": [{"user_id": "u", "item_id": "i", "type": "view"}] * 1_001},
            "body.events",
            "at most 1000",
        ),
    ]
    tracemalloc.start()
    try:
        for route, body, field, needle in cases:
            raw = json.dumps(body).encode()
            assert len(raw) < 1_000_000
            tracemalloc.reset_peak()
            r = post(client, route, raw)
            _, peak = tracemalloc.get_traced_memory()
            err = check_error(r, 422, needle)
            # One error for the list, not one per element: the answer stays small.
            assert [e["field"] for e in err["errors"]] == [field] and len(r.content) < 1000
            assert peak < 64 * 2**20, (field, peak)  # bounded by the body limit, not the data
    finally:
        tracemalloc.stop()
    # Past the body limit nothing is parsed at all.
    r = post(client, REC, json.dumps({"history": ["a"] * 200_000}).encode())
    check_error(r, 413, "1000000 bytes")


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        (
            EVT,
            b'{"events":[{"user_id":"u","item_id":"i1","type":"like","ts":NaN}]}',
            "body.events.0.ts",
        ),
        (
            EVT,
            b'{"events":[{"user_id":"u","item_id":"i1","type":"like","ts":Infinity}]}',
            "body.events.0.ts",
        ),
        (
            EVT,
            b'{"events":[{"user_id":"u","item_id":"i1","type":"like","ts":-Infinity}]}',
            "body.events.0.ts",
        ),
        (
            EVT,
            b'{"events":[{"user_id":"u","item_id":"i1","type":"like","ts":1e400}]}',
            "body.events.0.ts",
        ),
        (REC, b'{"k": NaN}', "body.k"),
        (REC, b'{"k": Infinity}', "body.k"),
        (REC, b'{"k": 1e400}', "body.k"),
        (REC, b'{"user_id": NaN}', "body.user_id"),
        (REC, b'{"history": [NaN, "i1"]}', "body.history.0"),
    ],
)
def test_nan_and_infinity_literals_are_422_naming_the_field(
    client: TestClient, route: str, body: bytes, field: str
) -> None:
    err = check_error(post(client, route, body), 422)
    assert field in [e["field"] for e in err["errors"]]


def test_nothing_of_a_refused_batch_is_written(client: TestClient) -> None:
    good = {"event_id": "n1", "user_id": "u-nan", "item_id": "i1", "type": "dislike"}
    body = (
        json.dumps({"events": [good]})[:-2]
        + ', {"user_id":"u","item_id":"i1","type":"like","ts":NaN}]}'
    )
    check_error(post(client, EVT, body.encode()), 422)
    assert client.post(EVT, json={"events": [good]}).json() == {"accepted": 1, "duplicates": 0}


@pytest.mark.parametrize(
    "body",
    [
        b'{"user_id": "\\ud800"}',  # a lone surrogate: not a Unicode string
        b'{"history": ["\\udfff"]}',
        b'{"user_id": "\xff"}',  # not UTF-8
        b'{"k": ' + b"9" * 5_000 + b"}",  # an integer too long to convert
    ],
)
def test_undecodable_text_is_a_4xx(client: TestClient, body: bytes) -> None:
    r = post(client, REC, body)
    assert r.status_code in (400, 422), r.text
    check_error(r, r.status_code)


#: Ids that are hostile to file systems, Redis key syntax or logs, but valid opaque ids.
ODD_IDS = [
    "../x",
    "../../etc/passwd",
    "/abs/path",
    "{u:1}",
    "1}:pos",
    "*",
    "?[a-z]",
    "a:b:c",
    "%7B",
    "x" * 256,
    "\t\x01\x1b[31m\x7f",  # tab, control and an ANSI escape (NUL, CR and LF are refused)
    "\u200b\u202eevil",  # zero-width space, right-to-left override
    "\U0001f600" * 256,  # 256 characters, 4 bytes each in UTF-8
    "e\u0301",  # combining accent: distinct from the precomposed "é"
    "é",
]
#: Ids refused by every route (422 naming the field), never stored.
BAD_IDS = ["a\nb", "a\rb", "a\x00b", "", "x" * 257]


def _ids_round_trip(c: TestClient) -> None:
    """Each odd user dislikes its own item; the plain user "1" is not affected by "{u:1}"."""
    users = ODD_IDS + ["1"]
    events = [
        {"event_id": f"e{n}", "user_id": u, "item_id": f"i{n}", "type": "dislike"}
        for n, u in enumerate(users)
    ]
    r = c.post(EVT, json={"events": events})
    assert r.json() == {"accepted": len(users), "duplicates": 0}, r.text
    for n, user in enumerate(users):
        body = c.post(REC, json={"user_id": user, "k": 299, "exclude_seen": False}).json()
        got = {x["item_id"] for x in body["items"]}
        assert body["user_id"] == user
        assert f"i{n}" not in got and len(got) == 299, user  # only its own dislike is filtered
    for bad in BAD_IDS:
        for field in ("user_id", "item_id", "event_id"):
            ev = {"user_id": "u", "item_id": "i1", "type": "like", field: bad}
            err = check_error(c.post(EVT, json={"events": [ev]}), 422)
            assert f"body.events.0.{field}" in [e["field"] for e in err["errors"]]
        err = check_error(c.post(REC, json={"user_id": bad}), 422)
        assert "body.user_id" in [e["field"] for e in err["errors"]]
    # An odd item id asked for as a path: routed as one segment, never read as a file.
    for item in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "*", "a%00b", "x" * 257):
        r = c.get(f"/v1/items/{item}/similar")
        assert r.status_code in (404, 422), (item, r.status_code)
        assert "root:" not in r.text


def test_odd_ids_reach_no_file_name_sqlite(
    make_client: Callable[..., TestClient], tmp_path: Path, art: Path
) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    before_art = sorted(p.relative_to(art) for p in art.rglob("*"))
    c = make_client(store_url=f"sqlite:///{store_dir / 'store.sqlite'}")
    _ids_round_trip(c)
    names = {p.name for p in store_dir.iterdir()}
    assert names <= {"store.sqlite", "store.sqlite-wal", "store.sqlite-shm", "store.sqlite.lock"}, (
        names
    )
    assert sorted(p.relative_to(art) for p in art.rglob("*")) == before_art
    assert not (tmp_path / "x").exists() and not Path("/abs/path").exists()


#: Every key the store writes: its prefix and layout version, then one of these shapes.
KEY_SHAPES = re.compile(
    r"tt:v2:(\{u:[^{}:]*\}:(pos|dis|seen|ids|log|pend)|\{log\}:[a-z]+|\{i:[^{}:]*\}:meta)"
)


def test_odd_ids_never_change_the_redis_key_structure(
    make_client: Callable[..., TestClient],
) -> None:
    import redis

    url = redis_url(3)
    c = make_client(store_url=url)
    _ids_round_trip(c)
    client = redis.Redis(host="127.0.0.1", port=6379, db=3)
    try:
        keys = [k.decode("utf-8", "surrogateescape") for k in client.scan_iter(count=1000)]
    finally:
        client.close()
    odd = [k for k in keys if not KEY_SHAPES.fullmatch(k)]
    assert odd == []
    tags = {k.split(":{u:", 1)[1].split("}:", 1)[0] for k in keys if ":{u:" in k}
    assert len(tags) == len(ODD_IDS) + 1  # one hash tag per user: no two users share a key


def test_repeated_event_ids_in_one_batch_count_once_first_copy_wins(client: TestClient) -> None:
    """Idempotency holds inside a call as across calls: per (user_id, event_id), the first
    copy is applied, later copies are ``duplicates`` (even with different content)."""
    batch = [
        {"event_id": "d1", "user_id": "u-dup", "item_id": "i1", "type": "like"},
        {"event_id": "d1", "user_id": "u-dup", "item_id": "i2", "type": "dislike"},
        {"event_id": "d1", "user_id": "u-dup", "item_id": "i1", "type": "like"},
        {"event_id": "d1", "user_id": "u-other", "item_id": "i3", "type": "dislike"},
        {"event_id": "d2", "user_id": "u-dup", "item_id": "i4", "type": "like"},
    ]
    assert client.post(EVT, json={"events": batch}).json() == {"accepted": 3, "duplicates": 2}
    mine = client.post(REC, json={"user_id": "u-dup", "k": 300, "exclude_seen": False}).json()
    assert len(mine["items"]) == 300  # the whole catalog: the second copy's dislike of i2
    # was not applied (a dislike would filter it)
    other = client.post(REC, json={"user_id": "u-other", "k": 299, "exclude_seen": False}).json()
    assert "i3" not in {x["item_id"] for x in other["items"]}  # another user's d1 is its own
    assert client.post(EVT, json={"events": batch}).json() == {"accepted": 0, "duplicates": 5}
