"""Real Redis servers for the feature-store tests: the shared one and private ones.

The shared server (127.0.0.1:6379) is used on DB 1 and 2 only, each test with
its own key prefix. Durability and fault tests start a private
``redis-server`` in a temp dir on a free port (AOF on, fsync on every write).
"""

from __future__ import annotations

import random
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
    from feature_store.redis.keys import Keys
    from feature_store.urls import parse_url

    cfg = parse_url(url)
    client = redis.Redis(host=cfg.host, port=cfg.port, db=cfg.db)  # type: ignore[union-attr]
    keys = list(client.scan_iter(match=Keys(cfg.prefix).pattern(), count=1000))  # type: ignore[union-attr]
    for i in range(0, len(keys), 500):
        client.delete(*keys[i : i + 500])


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(*, cluster: bool = False) -> int:
    """A free loopback port; for a cluster node also its bus port (+10000), both <= 65535."""
    if not cluster:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    for _ in range(200):
        port = random.randint(20000, 55000)
        if _is_free(port) and _is_free(port + 10000):
            return port
    pytest.fail("no free port pair (port, port + 10000) for a Redis Cluster node")


class RedisServer:
    """A private redis-server with AOF (``appendfsync always``) in ``workdir``."""

    def __init__(self, workdir: Path, port: int | None = None, *, cluster: bool = False) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.workdir = workdir
        self.port = port or free_port(cluster=cluster)
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--daemonize", "no",
                *self.extra_args,
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


class RedisClusterServers:
    """A private three-primary Redis Cluster (no replicas, no persistence) in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.nodes = [RedisServer(workdir / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0?cluster=true"

    def start(self, timeout: float = 30.0) -> None:
        try:
            for node in self.nodes:
                node.extra_args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                   "--cluster-node-timeout", "2000", "--appendonly", "no"]  # fmt: skip
                node.start()
        except BaseException:  # pytest.fail included: leave no node running
            self.kill()
            raise
        clients = [redis.Redis(port=n.port, decode_responses=True) for n in self.nodes]
        bounds = [(0, 5460), (5461, 10922), (10923, 16383)]
        for client, (lo, hi) in zip(clients, bounds, strict=True):
            client.execute_command("CLUSTER ADDSLOTSRANGE", lo, hi)
        for node in self.nodes[1:]:
            clients[0].execute_command("CLUSTER MEET", "127.0.0.1", node.port)
        deadline = time.monotonic() + timeout
        while True:  # poll the condition "every node sees an OK cluster of three"
            infos = [c.cluster("INFO") for c in clients]
            if all(
                i["cluster_state"] == "ok" and int(i["cluster_known_nodes"]) == 3 for i in infos
            ):
                return
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the test Redis Cluster did not form within {timeout}s: {infos}")
            time.sleep(0.05)

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()
