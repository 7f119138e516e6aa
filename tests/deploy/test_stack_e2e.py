"""The compose stack's behaviour without Docker: the same processes, on loopback.

Each process is started with the command line and environment that
docker-compose.yml gives its service (read from the file, in production mode
with a real password), with only the container paths and host names mapped to
this machine: a private redis-server with the compose flags, the seed job,
``twotower serve`` (through the preflight), then one gated ``twotower pipeline``
run (forced only if the gate refuses).

Events in -> pipeline gates and publishes -> API hot-reloads -> recommendations change.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from common import artifacts
from tests.deploy import _deploy as d

TINY = "synthetic:users=200,items=120,events_per_user=15,seed=5"
API_KEY = "e2e-api-key-" + "7" * 32
NEW_ITEMS = [f"e2e-new-{i}" for i in range(8)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The compose services' argv and environment, mapped onto this machine."""

    def __init__(self, redis_port: int, password: str, art: Path, api_port: int):
        self.art, self.api_port = art, api_port
        self.model = d.compose(
            {
                "TWOTOWER_ENV": "production",
                "TWOTOWER_REDIS_PASSWORD": password,
                "TWOTOWER_API_KEYS": API_KEY,
                "TWOTOWER_SEED_DATA": TINY,
                "TWOTOWER_SEED_SETTINGS": "train.epochs=2 train.batch_size=256",
            }
        )
        self.mapping = {
            "@redis:6379/": f"@127.0.0.1:{redis_port}/",
            "/etc/twotower/pipeline.yaml": str(d.PIPELINE_CONFIG),
        }
        self.programs = {
            "twotower-preflight": [sys.executable, str(d.REPO / "deploy" / "preflight.py")],
            "twotower-seed": [sys.executable, str(d.REPO / "deploy" / "seed.py")],
            "twotower": [sys.executable, "-m", "twotower.cli"],
        }

    def _map(self, value: str) -> str:
        if value == "/artifacts":
            return str(self.art)
        for old, new in self.mapping.items():
            value = value.replace(old, new)
        return value

    def argv(self, service: str) -> list[str]:
        svc = self.model["services"][service]
        out: list[str] = []
        for arg in d.as_argv(svc["entrypoint"]) + d.as_argv(svc.get("command")):
            out += self.programs.get(arg, [self._map(arg)])
        return out

    def env(self, service: str, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("TWOTOWER_")}
        env = {
            k: self._map(v)
            for k, v in d.env_dict(self.model["services"][service]["environment"]).items()
        }
        return {**base, "PYTHONPATH": str(d.REPO), "TF_USE_LEGACY_KERAS": "1", **env, **extra}


@contextmanager
def api_process(stack: Stack, log: Path) -> Iterator[str]:
    argv = stack.argv("api")
    # Loopback only, on a free port (compose binds 0.0.0.0:8000 inside its own network).
    argv[argv.index("--host") + 1] = "127.0.0.1"
    argv[argv.index("--port") + 1] = str(stack.api_port)
    env = stack.env(
        "api", TWOTOWER_SERVE__PORT=str(stack.api_port), TWOTOWER_SERVE__RELOAD_POLL_S="0.3"
    )
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{stack.api_port}"
    try:
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(predicate, what: str, timeout_s: float, log: Path | None = None):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(0.2)  # another process's progress: polled, there is no event to await
    tail = log.read_text(errors="replace")[-4000:] if log else ""
    pytest.fail(f"{what} not reached in {timeout_s}s (last: {last!r})\n{tail}")


@pytest.mark.slow
def test_events_pipeline_publish_hot_reload(stack_redis, tmp_path):
    art = tmp_path / "artifacts"
    stack = Stack(stack_redis.port, stack_redis.password, art, _free_port())

    seed = subprocess.run(
        stack.argv("seed"), env=stack.env("seed"), capture_output=True, text=True, timeout=600
    )
    assert seed.returncode == 0, seed.stderr[-4000:]
    first = artifacts.latest_version(art)
    assert first is not None

    log = tmp_path / "api.log"
    with api_process(stack, log) as base, httpx.Client(base_url=base, timeout=10) as http:
        wait_for(lambda: http.get("/readyz").status_code == 200, "/readyz", 180, log)
        assert http.get("/v1/model").json()["version"] == first
        assert http.get(f"/v1/items/{NEW_ITEMS[0]}/similar", params={"k": 5}).status_code == 404

        # Events in: 40 new users, each liking 4 brand-new items (a catalog the model has not seen).
        now = time.time()
        events = [
            {
                "event_id": f"e2e-{u}-{j}",
                "user_id": f"e2e-user-{u}",
                "item_id": NEW_ITEMS[(u + j) % len(NEW_ITEMS)],
                "type": "like",
                "ts": now + j,
            }
            for u in range(40)
            for j in range(4)
        ]
        # Production: writes need the API key; reads stay open (auth=writes).
        assert http.post("/v1/events", json={"events": events}).status_code == 401
        r = http.post(
            "/v1/events", json={"events": events}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
        assert r.status_code == 200 and r.json() == {"accepted": len(events), "duplicates": 0}, (
            r.text
        )
        query = {"user_id": "e2e-user-0", "k": 10}
        before = http.post("/v1/recommend", json=query).json()
        assert before["model_version"] == first

        # One scheduled run, as the trainer service runs it (without --every: one
        # iteration), gated against the seed's version on one shared holdout.
        argv = stack.argv("trainer")
        cut = argv.index("--every")
        argv = argv[:cut] + argv[cut + 2 :] + ["--set", "train.epochs=2"]
        assert "--store" not in argv  # the URL (with its password) is in the environment
        env = stack.env("trainer", TWOTOWER_PIPELINE__MIN_NEW_EVENTS="1")
        gated = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
        assert gated.returncode in (0, 1), gated.stderr[-4000:]
        report = json.loads(gated.stdout)
        assert report["published"]["version"] == first
        assert report["gate"] and all(r["published"] is not None for r in report["gate"])
        if gated.returncode == 1:  # the gate said no: LATEST untouched, the reason on stderr
            assert report["outcome"] == "refused" and "quality gate refused" in gated.stderr
            assert artifacts.latest_version(art) == first
            # An operator overrides the gate: the same command with --force.
            forced = subprocess.run(
                [*argv, "--force"], env=env, capture_output=True, text=True, timeout=900
            )
            assert forced.returncode == 0, forced.stderr[-4000:]
        else:
            assert report["outcome"] == "published"
        second = artifacts.latest_version(art)
        assert second not in (None, first)
        manifest = artifacts.read_manifest(art, second)
        assert manifest["num_items"] > artifacts.read_manifest(art, first)["num_items"], (
            "the new items joined"
        )

        # The API follows LATEST without a restart.
        wait_for(lambda: http.get("/v1/model").json()["version"] == second, "hot reload", 120, log)
        similar = http.get(f"/v1/items/{NEW_ITEMS[0]}/similar", params={"k": 5})
        assert similar.status_code == 200, similar.text
        after = http.post("/v1/recommend", json=query).json()
        assert after["model_version"] == second
        assert len(after["items"]) == 10
        assert after["items"] != before["items"], (
            "recommendations did not change with the new version"
        )
        assert http.get("/readyz").status_code == 200
