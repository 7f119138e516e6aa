"""The request rate limit: token buckets per API key or client IP, 429 with Retry-After,
bounded memory, stated in the OpenAPI document."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from serving.ratelimit import RateLimiter

KEY = "rate-key-0123456789abcdef"
OTHER = "rate-other-0123456789abcd"


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_bucket_grants_the_burst_then_refills_at_the_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=2.0, burst=3, max_clients=10, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a") == pytest.approx(0.5)  # one token takes 1/rate seconds
    assert limiter.take("b") == 0.0  # another client has its own bucket
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)
    clock.now += 0.25
    assert limiter.take("a") == 0.0
    clock.now += 100  # never more than the burst
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_memory_is_bounded_least_recently_seen_client_goes_first() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=3, clock=clock)
    for client in ("a", "b", "c"):
        limiter.take(client)
    assert limiter.take("a") > 0  # a is empty, and now the most recently seen
    for n in range(1000):
        limiter.take(("ip", str(n)))
    assert len(limiter) == 3
    assert limiter.take("a") == 0.0  # evicted: back with a full bucket (documented)


def test_bad_parameters_are_refused() -> None:
    for args in ((0, 1, 1), (1, 0.5, 1), (1, 1, 0)):
        with pytest.raises(ValueError):
            RateLimiter(*args)


def test_api_answers_429_with_retry_after_per_key_and_per_ip(
    make_client: Callable[..., TestClient],
) -> None:
    c = make_client(api_keys=f"{KEY},{OTHER}", rate_limit_per_s=0.5, rate_limit_burst=2)
    auth = {"Authorization": f"Bearer {KEY}"}
    assert [c.post("/v1/recommend", json={"k": 1}, headers=auth).status_code for _ in range(2)] == [
        200,
        200,
    ]
    limited = c.post("/v1/recommend", json={"k": 1}, headers=auth)
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "2"  # one token every 2 s, rounded up
    assert limited.json()["error"] == "rate_limited" and "per second" in limited.json()["detail"]
    assert KEY not in limited.text
    # Another key, and requests without a key (bucketed by client IP), are counted apart.
    assert c.post("/v1/recommend", json={"k": 1}, headers={"X-API-Key": OTHER}).status_code == 200
    assert c.post("/v1/recommend", json={"k": 1}).status_code == 200
    # An unknown key does not buy a fresh bucket: it is counted with its IP.
    assert (
        c.post("/v1/recommend", json={"k": 1}, headers={"X-API-Key": "made-up-1"}).status_code
        == 200
    )
    assert (
        c.post("/v1/recommend", json={"k": 1}, headers={"X-API-Key": "made-up-2"}).status_code
        == 429
    )
    # Probes and metrics are never limited.
    for _ in range(5):
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    metrics = c.get("/metrics").text
    assert "twotower_rate_limited_total 2.0" in metrics
    assert 'route="/v1/recommend",status="429"' in metrics


def test_openapi_states_the_limit(make_client: Callable[..., TestClient]) -> None:
    c = make_client(rate_limit_per_s=5, rate_limit_burst=20)
    spec = c.get("/openapi.json").json()
    for path, item in spec["paths"].items():
        for op in item.values():
            if path.startswith("/v1/"):
                too_many = op["responses"]["429"]
                assert "5 requests per second (burst 20)" in too_many["description"]
                assert "Retry-After" in too_many["headers"]
            else:
                assert "429" not in op["responses"], path
    off = make_client().get("/openapi.json").json()
    assert all("429" not in op["responses"] for i in off["paths"].values() for op in i.values())
