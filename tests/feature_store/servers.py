"""Real Redis servers for the feature-store tests: the shared one and private ones.

The shared server (127.0.0.1:6379) is used on DB 1 and 2 only, each test with
its own key prefix. Durability and fault tests start a private
``redis-server`` in a temp dir on a free port (AOF on, fsync on every write).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import redis

SHARED_HOST, SHARED_PORT = "127.0.0.1", 6379
START_HINT = "start one with: redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no"


def shared_redis_url(db: int = 1, **query: str) -> str:
    """URL of the shared server with a fresh key prefix; fails the test if it is down."""
    assert db in (1, 2), "feature-store tests may only use DB 1 and 2 of the shared server"
    try:
        redis.Redis(host=SHARED_HOST, port=SHARED_PORT, db=db, socket_timeout=2).ping()
    except redis.ConnectionError as exc:
        pytest.fail(f"Redis at {SHARED_HOST}:{SHARED_PORT} is unreachable ({exc}); {START_HINT}")
    params = {"prefix": f"t{uuid.uuid4().hex[:12]}", **query}
    qs = "&".join(f"{k}={v}" for k, v in params.items())
    return f"redis://{SHARED_HOST}:{SHARED_PORT}/{db}?{qs}"


def drop_prefix(url: str) -> None:
    """Delete every key of the URL's prefix (the test's own keys only)."""
    from feature_store.keys import Keys
    from feature_store.urls import parse_url

    cfg = parse_url(url)
    client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db)  # type: ignore[union-attr]
    keys = list(client.scan_iter(match=Keys(cfg.prefix).pattern(), count=1000))  # type: ignore[union-attr]
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A private redis-server with AOF (``appendfsync always``) in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        while True:  # poll the condition "answers PING" (loading the AOF can take a moment)
            try:
                if client.ping():
                    return
            except (redis.ConnectionError, redis.TimeoutError):
                pass
            if self.proc.poll() is not None:
                pytest.fail(f"redis-server on port {self.port} exited with {self.proc.returncode}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"redis-server on port {self.port} did not answer within {timeout}s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: no shutdown save, only what the AOF already holds survives."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.kill()
        self.start()
