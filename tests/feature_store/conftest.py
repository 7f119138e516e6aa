"""Backends for the shared contract suite: a SQLite file and real Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from feature_store import OnlineStore, open_store
from tests.feature_store.servers import (
    RedisClusterServers,
    RedisServer,
    drop_prefix,
    shared_redis_url,
)

T = TypeVar("T")


def run_on_store(url: str, body: Callable[[OnlineStore], Awaitable[T]], **options: Any) -> T:
    """Open the store at ``url`` (``options`` as :func:`feature_store.open_store` takes
    them), run ``body(store)`` in a fresh event loop, close the store, return the result."""

    async def main() -> T:
        async with open_store(url, **options) as store:
            return await body(store)

    return asyncio.run(main())


@dataclass
class Backend:
    """A store URL for one test plus, where the backend allows it, a way to restart it."""

    name: str
    url: str
    restart: Callable[[], None] | None = None

    def with_options(self, **options: object) -> str:
        sep = "&" if "?" in self.url else "?"
        return self.url + sep + "&".join(f"{k}={v}" for k, v in options.items())


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    """A private three-node Redis Cluster, started once per test session."""
    cluster = RedisClusterServers(tmp_path_factory.mktemp("redis-cluster"))
    cluster.start()
    yield cluster
    cluster.kill()


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every contract test runs once per backend.

    Shared Redis: DB 1 and a key prefix per test; Redis Cluster: a private
    cluster (session-wide) and a key prefix per test.
    """
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'store.sqlite'}")
    elif request.param == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        yield Backend("redis-cluster", f"{cluster.url}&prefix=t{uuid.uuid4().hex[:12]}")
    else:
        url = shared_redis_url(1)
        yield Backend("redis", url)
        drop_prefix(url)


@pytest.fixture(params=["sqlite", "redis-aof"])
def durable_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Backends that can be restarted: the SQLite file, a private redis-server with AOF."""
    if request.param == "sqlite":
        yield Backend("sqlite", f"sqlite:///{tmp_path / 'store.sqlite'}", restart=lambda: None)
        return
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield Backend("redis", server.url + "?prefix=durable", restart=server.restart)
    finally:
        server.kill()
