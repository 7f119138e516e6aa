"""Fixtures of the stack tests: a private redis-server configured like compose's."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

REDIS_PASSWORD = "0123456789abcdef0123456789abcdef"


@dataclass
class RedisServer:
    port: int
    password: str

    def url(self, db: int = 0) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def stack_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """redis-server with the compose flags (AOF always, noeviction, requirepass) in a temp dir."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (Redis 7)")
    port = _free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    proc = subprocess.Popen(
        [
            exe,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--maxmemory-policy",
            "noeviction",
            "--requirepass",
            REDIS_PASSWORD,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(port, REDIS_PASSWORD)
    client = server.client()
    deadline = time.monotonic() + 20
    while True:
        try:
            if client.ping():
                break
        except redis.ConnectionError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"redis-server on port {port} did not start (exit {proc.poll()})")
        time.sleep(0.05)  # the server's own start-up: nothing to await but a reply
    try:
        yield server
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
