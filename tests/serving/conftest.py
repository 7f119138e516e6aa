"""Fixtures for serving tests: small genuine artifacts, app clients, real stores."""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving.artifact_factory import make_artifact

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
#: Databases of the shared Redis this test package may flush.
REDIS_DBS = (3, 4)
START_REDIS = 'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    return free_port()


@dataclass
class RedisProcess:
    """A ``redis-server`` this test started (so it may stop, continue or kill it)."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        """SIGSTOP: connections stay open, nothing answers (a hung or overloaded Redis)."""
        self.proc.send_signal(signal.SIGSTOP)

    def cont(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: connections are refused from now on."""
        self.proc.send_signal(signal.SIGCONT)
        self.proc.kill()
        self.proc.wait(timeout=10)


def wait_for_redis(port: int, timeout_s: float = 10.0) -> None:
    import redis

    client = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # our own child process starting: no event to await
    finally:
        client.close()


@contextlib.contextmanager
def redis_server(directory: Path, port: int | None = None) -> Iterator[RedisProcess]:
    """Start a private ``redis-server`` on a free loopback port; kill it on exit."""
    exe = shutil.which("redis-server")
    assert exe, "redis-server is needed for this test (apt-get install -y redis-server)"
    port = port or free_port()
    cmd = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*cmd, "--dir", str(directory)], stdout=subprocess.DEVNULL)
    server = RedisProcess(proc, port)
    try:
        wait_for_redis(port)
        yield server
    finally:
        if proc.poll() is None:
            server.kill()


@pytest.fixture(scope="session")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A published flat-index artifact: 300 items ``i0..i299``, dim 16, H=8, D=4."""
    d = tmp_path_factory.mktemp("art")
    make_artifact(d, num_items=300, dim=16, H=8, D=4, seed=0)
    return d


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store.sqlite'}"


def redis_url(db: int) -> str:
    """URL of one of our Redis databases, flushed; fails (never skips) when Redis is down."""
    import redis

    assert db in REDIS_DBS, f"serving tests may only use Redis DBs {REDIS_DBS}"
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db, socket_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT} ({exc}); start one with: {START_REDIS}"
        )
    client.flushdb()
    client.close()
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"


@pytest.fixture
def make_client(art: Path, sqlite_url: str) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)`` -> an entered TestClient (lifespan ran); all closed at teardown."""
    from serving.app import create_app
    from serving.settings import Settings

    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        values: dict[str, Any] = {"artifacts": art, "store_url": sqlite_url, "reload_poll_s": 3600}
        values.update(overrides)
        client = TestClient(create_app(Settings(**values)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()
