"""End to end: a real ``twotower serve`` process on a free loopback port, real Redis, every invariant of docs/CONTRACT.md.

The artifact comes from the test factory; ``running_server`` takes any artifact
directory, so the same checks run on a version made by ``twotower train``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from common import artifacts
from tests.serving.artifact_factory import make_artifact
from tests.serving.conftest import redis_url
from tests.serving.server import running_server

pytestmark = pytest.mark.slow


def _ids(body: dict) -> list[str]:
    return [it["item_id"] for it in body["items"]]


@pytest.fixture(scope="module")
def e2e_art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained by the real trainer (SavedModel tower, FAISS index, manifest)."""
    from trainer.run import train, trainer_config

    d = tmp_path_factory.mktemp("e2e-art")
    sets = [
        "train.epochs=2",
        "train.batch_size=128",
        "model.embedding_dim=16",
        "model.hidden_units=16",
        "model.history_length=8",
        "model.dislike_length=4",
        "frequency.buckets=4096",
    ]
    spec = "synthetic:users=300,items=400,events_per_user=20,seed=11"
    train(spec, d, trainer_config("synthetic", overrides=sets), progress=False)
    return d


@pytest.fixture(scope="module")
def server(e2e_art: Path):
    with running_server(e2e_art, redis_url(3)) as srv:
        yield srv


@pytest.fixture(scope="module")
def catalog(e2e_art: Path) -> list[str]:
    version = artifacts.latest_version(e2e_art)
    with np.load(artifacts.version_dir(e2e_art, version) / artifacts.ITEMS) as npz:
        return [str(x) for x in npz["ids"]]


def test_dislike_via_events_is_never_recommended_many_users_concurrently(server, catalog) -> None:
    rng = np.random.default_rng(0)
    users = [f"e2e-u{u}" for u in range(24)]
    violations: list[str] = []

    def one_user(user: str) -> int:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            clicks = [catalog[int(i)] for i in rng.choice(len(catalog), 5, replace=False)]
            events = [
                {"event_id": f"{user}-c{j}", "user_id": user, "item_id": x, "type": "click"}
                for j, x in enumerate(clicks)
            ]
            assert c.post("/v1/events", json={"events": events}).json()["accepted"] == 5
            disliked: set[str] = set()
            for rnd in range(4):
                for exclude_seen in (True, False):
                    body = c.post(
                        "/v1/recommend",
                        json={"user_id": user, "k": 10, "exclude_seen": exclude_seen},
                    ).json()
                    assert (
                        len(body["items"]) == 10
                        and body["degraded"] is False
                        and body["fallback"] is None
                    )
                    if disliked & set(_ids(body)):
                        violations.append(f"{user} round {rnd}: {disliked & set(_ids(body))}")
                top = _ids(body)[:3]
                events = [
                    {
                        "event_id": f"{user}-d{rnd}-{j}",
                        "user_id": user,
                        "item_id": x,
                        "type": "dislike",
                    }
                    for j, x in enumerate(top)
                ]
                assert c.post("/v1/events", json={"events": events}).json() == {
                    "accepted": 3,
                    "duplicates": 0,
                }
                disliked |= set(top)  # acknowledged: from now on never returned
            return len(disliked)

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(one_user, users))
    assert violations == []
    assert counts == [12] * len(users)


def test_dislike_in_the_store_and_in_the_body_is_never_recommended(server, catalog) -> None:
    from feature_store import open_store
    from feature_store.events import make_event

    user = "e2e-store-user"
    with httpx.Client(base_url=server.url, timeout=30) as c:
        before = _ids(
            c.post("/v1/recommend", json={"user_id": user, "history": catalog[:3], "k": 10}).json()
        )

        async def write() -> None:
            async with open_store(redis_url_no_flush(3)) as store:
                await store.append_events(
                    [
                        make_event(
                            {
                                "event_id": "st-1",
                                "user_id": user,
                                "item_id": before[0],
                                "type": "dislike",
                            }
                        )
                    ]
                )

        asyncio.run(write())
        after = c.post(
            "/v1/recommend", json={"user_id": user, "history": catalog[:3], "k": 10}
        ).json()
        assert before[0] not in _ids(after) and len(after["items"]) == 10
        body = c.post(
            "/v1/recommend", json={"history": catalog[:3], "dislikes": before[1:4], "k": 10}
        ).json()
        assert not set(before[1:4]) & set(_ids(body)) and len(body["items"]) == 10


def redis_url_no_flush(db: int) -> str:
    return f"redis://127.0.0.1:6379/{db}"


def test_exact_k_under_heavy_filtering(server, catalog) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        for remaining in (250, 60, 7, 0):
            blocked = catalog[: len(catalog) - remaining]
            half = len(blocked) // 2
            for k in (1, 50, 100):
                body = c.post(
                    "/v1/recommend",
                    json={
                        "history": catalog[-3:],
                        "dislikes": blocked[:half],
                        "exclude": blocked[half:],
                        "k": k,
                        "exclude_seen": False,
                    },
                ).json()
                got = _ids(body)
                assert len(got) == min(k, remaining) and len(set(got)) == len(got)
                assert not set(got) & set(blocked)


def test_events_are_idempotent_and_durable(server) -> None:
    events = [
        {"event_id": f"idem-{j}", "user_id": f"idem-u{j % 5}", "item_id": f"x{j}", "type": "view"}
        for j in range(40)
    ]

    def post(_: int) -> dict:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            return c.post("/v1/events", json={"events": events}).json()

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    assert sum(r["accepted"] for r in results) == 40
    assert sum(r["duplicates"] for r in results) == 5 * 40

    from feature_store import open_store

    async def logged() -> Counter:
        seen: Counter = Counter()
        async with open_store(redis_url_no_flush(3)) as store:
            cursor = None
            while True:
                batch = await store.read_log(cursor)
                if not batch.events:
                    return seen
                seen.update(e.event_id for e in batch.events if e.event_id.startswith("idem-"))
                cursor = batch.cursor

    assert asyncio.run(logged()) == Counter({e["event_id"]: 1 for e in events})


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/v1/recommend", {"json": {"k": 10**9}}, 422),
        ("post", "/v1/recommend", {"json": {"k": "ten"}}, 422),
        ("post", "/v1/recommend", {"json": {"history": {"a": 1}}}, 422),
        (
            "post",
            "/v1/recommend",
            {"content": b"\xff\xfe garbage", "headers": {"content-type": "application/json"}},
            422,
        ),
        (
            "post",
            "/v1/recommend",
            {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
            400,
        ),
        (
            "post",
            "/v1/recommend",
            {
                "content": b'{"history": ["' + b"x" * 2_000_000 + b'"]}',
                "headers": {"content-type": "application/json"},
            },
            413,
        ),
        (
            "post",
            "/v1/events",
            {"json": {"events": [{"user_id": "u", "item_id": 3.5, "type": "click"}]}},
            422,
        ),
        ("post", "/v1/events", {"json": {"events": []}}, 422),
        ("get", "/v1/items/%00/similar", {}, 404),
        ("get", "/v1/items/i1/similar?k=-1", {}, 422),
        ("get", "/v1/nope", {}, 404),
    ],
)
def test_bad_input_is_4xx_with_a_json_reason(
    server, method: str, path: str, kwargs: dict, status: int
) -> None:
    r = httpx.request(method.upper(), server.url + path, timeout=30, **kwargs)
    assert r.status_code == status, r.text[:500]
    assert r.json()["detail"] and "error parsing" not in r.json()["detail"]
    assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200


def test_unknown_ids_are_ignored_and_reported(server, catalog) -> None:
    body = httpx.post(
        server.url + "/v1/recommend",
        json={"history": [catalog[0], "ghost"], "exclude": ["ghost-2"], "k": 4},
        timeout=30,
    ).json()
    assert body["ignored_items"] == ["ghost", "ghost-2"] and len(body["items"]) == 4


def test_hot_reload_under_load_no_failures_no_mixed_versions(tmp_path: Path) -> None:
    art = tmp_path / "art"
    v1 = make_artifact(art, num_items=200, prefix="a", seed=1)
    prefixes = {v1: "a"}
    stop = threading.Event()
    failures: list[str] = []
    seen_versions: Counter = Counter()

    def fire(worker: int) -> None:
        with httpx.Client(timeout=30) as c:
            j = 0
            while not stop.is_set():
                j += 1
                hist = [f"{p}{(worker * 7 + j) % 50}" for p in ("a", "b")]  # one id of each version
                try:
                    r = c.post(f"{srv.url}/v1/recommend", json={"history": hist, "k": 20})
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")
                    continue
                body = r.json()
                version = body["model_version"]
                seen_versions[version] += 1
                prefix = prefixes.get(version)
                if (
                    prefix is None
                    or len(body["items"]) != 20
                    or not all(i.startswith(prefix) for i in _ids(body))
                ):
                    failures.append(f"mixed or unknown: {version} {_ids(body)[:5]}")

    with running_server(art, redis_url(4), TWOTOWER_SERVE__RELOAD_POLL_S="0.2") as srv:
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(fire, w) for w in range(6)]
            deadline = time.monotonic() + 60
            while seen_versions[v1] < 50 and time.monotonic() < deadline and not failures:
                time.sleep(0.05)
            v2 = make_artifact(art, num_items=150, prefix="b", seed=2, publish=False)
            prefixes[v2] = "b"
            artifacts.publish(art, v2)
            while seen_versions[v2] < 100 and time.monotonic() < deadline and not failures:
                time.sleep(0.05)
            stop.set()
            for f in futures:
                f.result()
        model = httpx.get(srv.url + "/v1/model", timeout=5).json()
    assert failures == []
    assert seen_versions[v1] >= 50 and seen_versions[v2] >= 100, seen_versions
    assert model["version"] == v2


def _recommend_count(metrics_text: str) -> float:
    """``POST /v1/recommend`` 200 answers counted in a /metrics scrape."""
    prefix = "twotower_http_request_duration_seconds_count{"
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith(prefix) and 'route="/v1/recommend"' in line and 'status="200"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_several_workers_share_the_store_and_sum_their_metrics(e2e_art: Path, catalog) -> None:
    with (
        running_server(e2e_art, redis_url(4), workers=2, timeout_s=120) as srv,
        httpx.Client(base_url=srv.url, timeout=30) as c,
    ):
        user = "multi-worker-user"
        top = _ids(
            c.post("/v1/recommend", json={"user_id": user, "history": catalog[:2], "k": 5}).json()
        )
        assert (
            c.post(
                "/v1/events",
                json={
                    "events": [
                        {"event_id": "mw-1", "user_id": user, "item_id": top[0], "type": "dislike"}
                    ]
                },
            ).json()["accepted"]
            == 1
        )
        sent = 1
        for _ in range(20):  # new connections land on either worker
            with httpx.Client(base_url=srv.url, timeout=30) as fresh:
                body = fresh.post(
                    "/v1/recommend", json={"user_id": user, "history": catalog[:2], "k": 5}
                ).json()
                assert top[0] not in _ids(body) and len(body["items"]) == 5
                sent += 1
        # Whichever worker answers the scrape, it reports the sum over both: every scrape
        # counts all 21 answers (a per-worker registry would show each worker's share).
        counts, pids = [], set()
        for _ in range(12):
            with httpx.Client(base_url=srv.url, timeout=30) as fresh:
                text = fresh.get("/metrics").text
            counts.append(_recommend_count(text))
            pids |= {
                line.split('pid="', 1)[1].split('"', 1)[0]
                for line in text.splitlines()
                if line.startswith("twotower_model_info{") and 'pid="' in line
                if line.endswith(" 1.0")
            }
        assert counts == [float(sent)] * len(counts), counts
        assert len(pids) == 2, pids  # both workers serve the model, one gauge each
        with httpx.Client(base_url=srv.url, timeout=30) as fresh:
            fresh.post("/v1/recommend", json={"user_id": user, "history": catalog[:2], "k": 5})
            assert _recommend_count(fresh.get("/metrics").text) == sent + 1  # monotone
