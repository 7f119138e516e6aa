"""Fixtures of the stack tests: a private redis-server started the way compose starts it."""

from __future__ import annotations

import os
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
    """redis-server started by the compose file's own redis command, on loopback in a temp dir.

    The command is the compose script (``sh -c``: config on stdin, AOF always,
    noeviction, maxmemory, the password from ``REDIS_PASSWORD``), run with a stand-in
    for the image's ``docker-entrypoint.sh`` (which only drops privileges) and the
    port, bind address and data directory appended as the script allows.
    """
    from tests.deploy import _deploy as d

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.fail("redis-server is not installed: apt-get install redis-server (Redis 7)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    entrypoint = bin_dir / "docker-entrypoint.sh"
    entrypoint.write_text('#!/bin/sh\nexec "$@"\n')
    entrypoint.chmod(0o755)
    port = _free_port()
    data = tmp_path / "redis-data"
    data.mkdir()
    svc = d.compose({"TWOTOWER_REDIS_PASSWORD": REDIS_PASSWORD})["services"]["redis"]
    argv = d.as_argv(svc["entrypoint"]) + d.as_argv(svc["command"])
    extra = ["--port", str(port), "--bind", "127.0.0.1", "--dir", str(data), "--save", ""]
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        **d.env_dict(svc["environment"]),
    }
    log = (tmp_path / "redis.log").open("wb")
    proc = subprocess.Popen([*argv, "sh", *extra], env=env, stdout=log, stderr=log)
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
            log.close()
            pytest.fail(
                f"redis-server on port {port} did not start (exit {proc.poll()}): "
                + (tmp_path / "redis.log").read_text()[-2000:]
            )
        time.sleep(0.05)  # the server's own start-up: nothing to await but a reply
    try:
        yield server
    finally:
        client.close()
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
