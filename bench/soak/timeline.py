"""The soak's timeline: set-up, traffic, and the faults injected while it runs."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.soak.clients import (
    CHECKERS,
    ITEMS,
    KNOWN_USERS,
    WRITERS,
    WRK_SCRIPT,
    Tally,
    checker,
    events_writer,
    logged_events,
    parse_wrk,
    users,
)
from bench.soak.environment import (
    ArtifactVolume,
    RedisServer,
    _twotower,
    catalog,
    copy_version,
    corrupt_versions,
    free_port,
    rss_bytes,
)

# --- the run -------------------------------------------------------------------------------


@dataclass
class Run:
    tmp: Path
    duration: float
    redis: RedisServer
    volume: ArtifactVolume
    port: int = field(default_factory=free_port)
    server: subprocess.Popen[bytes] | None = None
    log: list[str] = field(default_factory=list)
    faults: dict[str, Any] = field(default_factory=dict)

    @property
    def art(self) -> Path:
        return self.volume.path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def note(self, text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        self.log.append(line)
        print(line, flush=True)

    async def cli(self, *args: str, timeout: float = 900) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *_twotower(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        return int(proc.returncode or 0), out.decode(errors="replace")

    async def pipeline(self) -> tuple[int, str]:
        return await self.cli(
            "pipeline", "--store", self.redis.url, "--artifacts", str(self.art), "--epochs", "1",
            "--force", "--set", "train.batch_size=256",
        )  # fmt: skip

    def latest(self) -> str | None:
        p = self.art / "LATEST"
        return p.read_text().strip() if p.exists() else None

    async def served(self) -> str | None:
        async with httpx.AsyncClient(timeout=5) as c:
            with contextlib.suppress(httpx.HTTPError):
                return str((await c.get(self.url + "/v1/model")).json()["version"])
        return None

    async def wait_served(self, version: str, timeout: float = 120) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if await self.served() == version:
                return time.monotonic() - t0
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{version} not served after {timeout}s")

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5) as c:
            return (await c.get(self.url + "/metrics")).text

    async def readyz(self) -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=5) as c:
            r = await c.get(self.url + "/readyz")
            return {"status": r.status_code, **r.json()}

    def server_log(self) -> str:
        return (self.tmp / "serve.log").read_text(errors="replace")


async def setup(run: Run) -> str:
    run.redis.start()
    run.note(f"redis-server (AOF, appendfsync always) on {run.redis.port}")
    code, out = await run.cli(
        "ingest", "--data", f"synthetic:users={KNOWN_USERS},items={ITEMS},seed=3",
        "--store", run.redis.url,
    )  # fmt: skip
    if code:
        raise RuntimeError(f"ingest failed ({code}):\n{out[-3000:]}")
    code, out = await run.pipeline()
    v1 = run.latest()
    if code or v1 is None:
        raise RuntimeError(f"first pipeline run failed ({code}):\n{out[-3000:]}")
    run.note(f"first version {v1}")
    env = {**os.environ, "TWOTOWER_SERVE__RELOAD_POLL_S": "0.5", "TF_CPP_MIN_LOG_LEVEL": "2"}
    log = open(run.tmp / "serve.log", "wb")  # noqa: SIM115 - lives as long as the server
    run.server = subprocess.Popen(
        [*_twotower(), "serve", "--artifacts", str(run.art), "--store", run.redis.url,
         "--port", str(run.port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    await run.wait_served(v1, timeout=180)
    return v1


async def faults(run: Run, v1: str, stop: asyncio.Event) -> None:
    d = run.duration
    t0 = time.monotonic()

    async def at(fraction: float) -> None:
        await asyncio.sleep(max(0.0, t0 + fraction * d - time.monotonic()))

    # 1. The artifact volume fills during a pipeline export; then space returns.
    await at(0.05)
    full: dict[str, Any] = {"run": run.volume.mounted}
    if run.volume.mounted:
        before = sorted(p.name for p in (run.art / "versions").iterdir())
        full["free_bytes"] = run.volume.fill()
        code, out = await run.pipeline()
        after = sorted(p.name for p in (run.art / "versions").iterdir())
        full.update(
            exit_code=code, latest_unchanged=run.latest() == v1, new_version_dirs=len(after) - len(before),
            served_meanwhile=await run.served(), message=_last_error_line(out),
        )  # fmt: skip
        run.volume.free()
        run.note(
            f"pipeline on a full volume: exit {code}, LATEST unchanged={full['latest_unchanged']}"
        )
    else:
        full["not_run"] = f"no small file system could be mounted here ({run.volume.why_not})"
        run.note(f"disk-full fault not run: {full['not_run']}")
    code, out = await run.pipeline()
    v2 = run.latest()
    full["next_run_exit_code"] = code
    full["next_run_published"] = v2 != v1
    if code or v2 is None or v2 == v1:
        raise RuntimeError(f"pipeline after space returned: exit {code}\n{out[-3000:]}")
    run.faults["reload_1"] = {"version": v2, "seconds_to_serve": await run.wait_served(v2)}
    run.faults["disk_full"] = full
    run.note(f"hot reload 1 -> {v2}")

    # 2. Redis killed and restarted.
    await at(0.45)
    run.redis.kill()
    down_at = time.monotonic()
    run.note("redis killed (SIGKILL)")
    async with httpx.AsyncClient(base_url=run.url, timeout=10) as c:
        await asyncio.sleep(1.0)
        probe = await c.post("/v1/recommend", json={"user_id": "u1", "k": 20})
        ev = await c.post(
            "/v1/events",
            json={"events": [{"event_id": "soak-probe-down", "user_id": "u1",
                              "item_id": "i1", "type": "click"}]},
        )  # fmt: skip
        await asyncio.sleep(2.0)
        run.redis.start()
        run.note("redis restarted")
        recovered = None
        while time.monotonic() - down_at < 60:
            r = await c.post("/v1/recommend", json={"user_id": "u1", "k": 20})
            if r.status_code == 200 and not r.json().get("degraded"):
                recovered = time.monotonic() - down_at
                break
            await asyncio.sleep(0.2)
    run.faults["redis_restart"] = {
        "recommend_while_down": {
            "status": probe.status_code,
            "degraded": probe.json().get("degraded"),
        },
        "events_while_down": {
            "status": ev.status_code,
            "retry_after": ev.headers.get("retry-after"),
        },
        "recovered_after_s": recovered,
    }

    # 3. Corrupt versions named by LATEST: the last good one keeps serving.
    await at(0.65)
    from common import artifacts

    corrupt = []
    for bad, what in corrupt_versions(run.art, v2):
        artifacts.publish(run.art, bad)
        await asyncio.sleep(2.5)  # five reload polls
        metrics = await run.metrics()
        ready = await run.readyz()
        corrupt.append({
            "fault": what, "version": bad, "served": await run.served(),
            "stale_metric": _gauge(metrics, "twotower_model_stale"),
            "readyz": ready, "logged": bad in run.server_log(),
        })  # fmt: skip
        run.note(f"corrupt version ({what}) published: serving {corrupt[-1]['served']}")
    run.faults["corrupt_versions"] = corrupt

    # 4. A good version: hot reload 2.
    await at(0.80)
    v3 = copy_version(run.art, v2)
    artifacts.publish(run.art, v3)
    run.faults["reload_2"] = {"version": v3, "seconds_to_serve": await run.wait_served(v3)}
    run.note(f"hot reload 2 -> {v3}")


def _gauge(metrics: str, name: str) -> float | None:
    for line in metrics.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def _last_error_line(out: str) -> str:
    lines = [x for x in out.splitlines() if x.strip()]
    return lines[-1][:300] if lines else ""


async def traffic(run: Run, v1: str) -> dict[str, Any]:
    """Load and checks for ``run.duration`` seconds (longer if the faults need it)."""
    tally = Tally()
    stop = asyncio.Event()
    items = sorted(catalog(run.art, v1))
    t_end = time.monotonic() + run.duration
    wrk = shutil.which("wrk")
    wrk_proc = None
    if wrk:
        script = run.tmp / "recommend.lua"
        script.write_text(WRK_SCRIPT % {"users": ",".join(f'"{u}"' for u in users())})
        wrk_proc = await asyncio.create_subprocess_exec(
            wrk, "-t1", "-c8", f"-d{int(run.duration) * 20}s", "--latency", "-s", str(script),
            run.url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    tasks = [
        asyncio.create_task(events_writer(run.url, w, items, tally, stop)) for w in range(WRITERS)
    ]
    tasks += [
        asyncio.create_task(checker(run.url, c, run.art, tally, stop, load=wrk is None))
        for c in range(CHECKERS)
    ]
    await asyncio.sleep(min(10.0, run.duration * 0.05))
    assert run.server is not None
    rss_warm = rss_bytes(run.server.pid)
    failure = None
    try:
        await faults(run, v1, stop)
    except Exception as exc:  # reported beside the figures, and fails the run
        failure = f"{type(exc).__name__}: {exc}"
        run.note(f"fault schedule failed: {failure}")
    # Traffic goes on after the last fault (the last reload must answer for a while too).
    await asyncio.sleep(max(t_end - time.monotonic(), min(15.0, 0.1 * run.duration)))
    stop.set()
    await asyncio.gather(*tasks)
    rss_end = rss_bytes(run.server.pid)
    wrk_figures: dict[str, Any] = {
        "used": False,
        "why": "wrk is not installed: Python clients load",
    }
    if wrk_proc is not None:
        wrk_proc.send_signal(signal.SIGINT)  # wrk stops and prints its summary
        out, _ = await wrk_proc.communicate()
        wrk_figures = {"used": True, **parse_wrk(out.decode(errors="replace"))}
    return {"tally": tally, "wrk": wrk_figures, "rss_warm": rss_warm, "rss_end": rss_end,
            "failure": failure}  # fmt: skip


async def soak(
    tmp: Path, duration: float, volume_mb: int
) -> tuple[Run, dict[str, Any], Counter[tuple[str, str]]]:
    run = Run(tmp=tmp, duration=duration, redis=RedisServer(tmp / "redis"),
              volume=ArtifactVolume(tmp / "art", volume_mb))  # fmt: skip
    (tmp / "redis").mkdir(exist_ok=True)
    try:
        v1 = await setup(run)
        seen = await traffic(run, v1)
        logged, log_figures = await logged_events(run.redis.url, run.art)
        run.faults["log"] = log_figures
        return run, seen, logged
    finally:
        if run.server is not None:
            run.server.send_signal(signal.SIGINT)
            try:
                run.server.wait(30)
            except subprocess.TimeoutExpired:
                run.server.kill()
        run.redis.kill()
        run.volume.close()
