"""Soak with faults: mixed traffic on loopback while the service is hot-reloaded,
its Redis killed and restarted, a corrupt version published and the artifact
volume filled during a pipeline export; then every acknowledged event is
checked against the event log.

    python -m bench.soak                      # 180 s of traffic -> bench/results/soak.{json,md}
    python -m bench.soak --duration 30 --name soak_smoke --out /tmp/x   # the CI smoke

Everything is real and owned by the run: a ``redis-server`` (AOF,
``appendfsync always``) in a temp dir, ``twotower ingest`` / ``pipeline`` /
``serve`` as a user runs them, wrk for recommend load (a Python client when
wrk is not installed; the results say which), Python clients for events (each
acknowledged event logged client-side) and for checking answers. The artifact
directory is a small tmpfs when the machine allows mounting one (root);
otherwise the disk-full fault is reported as not run.

Timeline (fractions of ``--duration`` after the load starts):
  0.05  pipeline with the artifact volume full: must fail, publish nothing
  then  space returns, pipeline again: must publish -> hot reload 1
  0.45  kill -9 Redis, 3 s down, restart: recommend degrades and recovers,
        events get 503 + Retry-After and are retried with the same ids
  0.65  a version with a truncated index, then one whose manifest disagrees
        with its items, each named by LATEST: the last good version keeps serving
  0.80  a good version published -> hot reload 2

Figures: acknowledged events lost / duplicated in the log, answers that mixed
versions or showed an acknowledged dislike, 5xx other than the documented
503s, degraded answers, memory of the server after warm-up and at the end.
The run exits 1 if any invariant is broken.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: RSS growth from warm-up to the end that the run accepts (a reload holds two models briefly).
MEMORY_MARGIN = 0.5
#: Users with stored history (from the synthetic data) and users the model has never seen.
KNOWN_USERS = 300
COLD_USERS = 100
ITEMS = 400
WRITERS = 4
CHECKERS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _twotower() -> list[str]:
    exe = Path(sys.executable).with_name("twotower")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "twotower.cli"]


# --- owned processes and the artifact volume ---------------------------------------------


class RedisServer:
    """A ``redis-server`` the run owns: AOF with fsync on every write, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.workdir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 1),
            ):
                out = subprocess.run(
                    ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True
                )
                if out.stdout.strip() == "PONG":
                    return
            time.sleep(0.05)  # polling a process we started: no event to await
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class ArtifactVolume:
    """The artifact directory, on a small tmpfs when one can be mounted (so it can fill)."""

    def __init__(self, path: Path, size_mb: int) -> None:
        self.path = path
        self.filler = path / ".filler"
        path.mkdir(parents=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path)],
            capture_output=True, text=True,
        )  # fmt: skip
        self.mounted = out.returncode == 0
        self.why_not = "" if self.mounted else (out.stderr.strip() or "mount failed")

    def fill(self, leave_bytes: int = 16 * 1024) -> int:
        """Write a filler file until only ``leave_bytes`` are free; return the free bytes."""
        free = shutil.disk_usage(self.path).free
        with open(self.filler, "wb") as f:
            chunk = b"\0" * (1 << 20)
            todo = max(0, free - leave_bytes)
            with contextlib.suppress(OSError):
                while todo > 0:
                    todo -= f.write(chunk[: min(len(chunk), todo)])
        return shutil.disk_usage(self.path).free

    def free(self) -> None:
        self.filler.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children (uvicorn workers), from /proc."""
    total = 0
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


# --- versions ------------------------------------------------------------------------------


def catalog(art: Path, version: str) -> set[str]:
    with np.load(art / "versions" / version / "items.npz", allow_pickle=False) as npz:
        return set(np.asarray(npz["ids"]).astype(str).tolist())


def copy_version(art: Path, source: str) -> str:
    """A complete copy of ``source`` under a new id (not published)."""
    from common import artifacts

    new = artifacts.new_version_id()
    staging = art / "versions" / f".soak-{new}"
    shutil.copytree(art / "versions" / source, staging)
    manifest = json.loads((staging / "manifest.json").read_text())
    manifest["version"] = new
    (staging / "manifest.json").write_text(json.dumps(manifest))
    staging.rename(art / "versions" / new)
    return new


def corrupt_versions(art: Path, good: str) -> list[tuple[str, str]]:
    """Two broken copies of ``good``: a truncated index, a manifest that disagrees with its items."""
    truncated = copy_version(art, good)
    index = art / "versions" / truncated / "index.faiss"
    with open(index, "r+b") as f:
        f.truncate(max(1, index.stat().st_size // 3))
    disagrees = copy_version(art, good)
    mpath = art / "versions" / disagrees / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["embedding_dim"] = int(manifest["embedding_dim"]) + 3
    mpath.write_text(json.dumps(manifest))
    return [(truncated, "truncated index"), (disagrees, "manifest disagrees with items")]


# --- traffic -------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the clients saw; every figure the run reports comes from here or the log."""

    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (user, event id) -> type
    dislikes_by_user: dict[str, set[str]] = field(default_factory=dict)
    acked_calls: int = 0
    resent_calls: int = 0
    resent_not_duplicates: int = 0
    event_status: Counter[int] = field(default_factory=Counter)
    event_503_without_retry_after: int = 0
    retries: int = 0
    recommend_status: Counter[int] = field(default_factory=Counter)
    degraded: int = 0
    versions_seen: Counter[str] = field(default_factory=Counter)
    mixed_versions: list[str] = field(default_factory=list)
    disliked_shown: list[str] = field(default_factory=list)
    short_lists: int = 0
    errors: list[str] = field(default_factory=list)


def users() -> list[str]:
    return [f"u{i}" for i in range(KNOWN_USERS)] + [f"soak-cold-{i}" for i in range(COLD_USERS)]


async def events_writer(
    url: str, wid: int, items: list[str], tally: Tally, stop: asyncio.Event
) -> None:
    """Batches of 1-5 events with unique ids; 503 -> wait Retry-After, resend the same ids.

    Every 20th acknowledged call is sent again: it must come back all duplicates.
    """
    rng = random.Random(wid)
    pool = users()
    seq = 0
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        while not stop.is_set():
            batch = []
            for _ in range(rng.randint(1, 5)):
                seq += 1
                kind = rng.choice(["click", "like", "dislike", "view", "dislike"])
                user = rng.choice(pool)
                batch.append(
                    {"event_id": f"soak-{wid}-{seq}", "user_id": user,
                     "item_id": rng.choice(items), "type": kind}
                )  # fmt: skip
            body = await _send_until_acked(client, batch, tally, stop)
            if body is None:
                continue
            tally.acked_calls += 1
            for e in batch:
                tally.acked[(e["user_id"], e["event_id"])] = e["type"]
                if e["type"] == "dislike":
                    tally.dislikes_by_user.setdefault(e["user_id"], set()).add(e["item_id"])
            if tally.acked_calls % 20 == 0:
                again = await _send_until_acked(client, batch, tally, stop)
                tally.resent_calls += 1
                if again is not None and (again["accepted"], again["duplicates"]) != (
                    0,
                    len(batch),
                ):
                    tally.resent_not_duplicates += 1
            await asyncio.sleep(0.01)


async def _send_until_acked(
    client: httpx.AsyncClient, batch: list[dict[str, str]], tally: Tally, stop: asyncio.Event
) -> dict[str, Any] | None:
    """POST the batch until a 200 (retrying 503s and connection errors with the same ids).

    Gives up only when the run is stopping and the batch was never acknowledged: then it
    is not counted as acknowledged (its fate is checked as "written, unacknowledged").
    """
    give_up_at: float | None = None
    while True:
        try:
            r = await client.post("/v1/events", json={"events": batch})
        except httpx.HTTPError as exc:
            tally.errors.append(f"events: {type(exc).__name__}")
            await asyncio.sleep(0.2)
            continue
        tally.event_status[r.status_code] += 1
        if r.status_code == 200:
            return dict(r.json())
        if r.status_code != 503:
            tally.errors.append(f"events: {r.status_code} {r.text[:200]}")
            return None
        retry_after = r.headers.get("retry-after")
        if retry_after is None:
            tally.event_503_without_retry_after += 1
        tally.retries += 1
        if stop.is_set():
            give_up_at = give_up_at or time.monotonic() + 30
            if time.monotonic() > give_up_at:
                return None
        await asyncio.sleep(min(float(retry_after or 1), 2.0))


async def checker(
    url: str, cid: int, art: Path, tally: Tally, stop: asyncio.Event, load: bool
) -> None:
    """Recommend for random users and check each answer against the log of acked dislikes.

    An answer must name a version whose catalog holds all its items, carry exactly k
    items, and never show an item the user disliked in an event acknowledged before the
    request was sent (invariant 1).
    """
    rng = random.Random(1000 + cid)
    pool = users()
    catalogs: dict[str, set[str]] = {}
    async with httpx.AsyncClient(base_url=url, timeout=15) as client:
        while not stop.is_set():
            user = rng.choice(pool)
            disliked = set(tally.dislikes_by_user.get(user, ()))  # acked before the request
            try:
                r = await client.post("/v1/recommend", json={"user_id": user, "k": 20})
            except httpx.HTTPError as exc:
                tally.errors.append(f"recommend: {type(exc).__name__}")
                continue
            tally.recommend_status[r.status_code] += 1
            if r.status_code != 200:
                tally.errors.append(f"recommend: {r.status_code} {r.text[:200]}")
                continue
            body = r.json()
            version = body["model_version"]
            tally.versions_seen[version] += 1
            tally.degraded += bool(body.get("degraded"))
            ids = [it["item_id"] for it in body["items"]]
            if version not in catalogs:
                catalogs[version] = catalog(art, version)
            if not set(ids) <= catalogs[version]:
                tally.mixed_versions.append(
                    f"{version}: {sorted(set(ids) - catalogs[version])[:3]}"
                )
            shown = disliked & set(ids)
            if shown:
                tally.disliked_shown.append(f"{user}: {sorted(shown)[:3]} ({version})")
            tally.short_lists += len(ids) != 20
            if not load:
                await asyncio.sleep(0.02)


WRK_SCRIPT = """
local users = {%(users)s}
local threads = {}
counts = {}  -- globals: done() reads them from each thread with t:get
degraded = 0
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {}; degraded = 0 end
request = function()
  local u = users[math.random(#users)]
  return wrk.format("POST", "/v1/recommend", {["Content-Type"] = "application/json"},
                    '{"user_id":"' .. u .. '","k":20}')
end
response = function(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
  if string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
end
done = function(summary, latency, requests)
  local agg = {}
  local deg = 0
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do agg[k] = (agg[k] or 0) + v end
    deg = deg + t:get("degraded")
  end
  io.write("STATUS")
  for k, v in pairs(agg) do io.write(" " .. k .. "=" .. v) end
  io.write("\\nDEGRADED " .. deg .. "\\n")
  io.write(string.format("LATENCY p50_us=%%d p99_us=%%d\\n",
           latency:percentile(50), latency:percentile(99)))
end
"""


def parse_wrk(text: str) -> dict[str, Any]:
    status = Counter[int]()
    line = next((x for x in text.splitlines() if x.startswith("STATUS")), "STATUS")
    for pair in line.split()[1:]:
        k, v = pair.split("=")
        status[int(k)] += int(v)
    degraded = re.search(r"DEGRADED (\d+)", text)
    lat = re.search(r"p50_us=(\d+) p99_us=(\d+)", text)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Socket errors: (.*)", text)
    return {
        "status": {str(k): v for k, v in sorted(status.items())},
        "degraded": int(degraded.group(1)) if degraded else None,
        "p50_ms": int(lat.group(1)) / 1000 if lat else None,
        "p99_ms": int(lat.group(2)) / 1000 if lat else None,
        "req_per_s": float(rps.group(1)) if rps else None,
        "socket_errors": errors.group(1) if errors else None,
    }


# --- the event log -------------------------------------------------------------------------


async def logged_events(
    store_url: str, art: Path
) -> tuple[Counter[tuple[str, str]], dict[str, Any]]:
    """Every (user, event id) in the store's log stream and in the Parquet export, counted.

    The pipeline moves events from the stream to ART/events; an event may sit in both
    (the stream is trimmed only after its retention), so the count is the larger of its
    count in the stream and its count in the export: 2 in either is a duplicate.
    """
    import pyarrow.parquet as pq

    from feature_store import open_store

    stream: Counter[tuple[str, str]] = Counter()
    async with open_store(store_url) as store:
        cursor = None
        while True:
            batch = await store.read_log(cursor, limit=10_000)
            for e in batch.events:
                stream[(e.user_id, e.event_id)] += 1
            if not batch.events:
                break
            cursor = batch.cursor
    export: Counter[tuple[str, str]] = Counter()
    files = sorted((art / "events").rglob("*.parquet")) if (art / "events").exists() else []
    for path in files:
        table = pq.read_table(path, columns=["user_id", "event_id"]).to_pydict()
        for u, e in zip(table["user_id"], table["event_id"], strict=True):
            export[(u, e)] += 1
    both = Counter({k: max(stream[k], export[k]) for k in stream.keys() | export.keys()})
    return both, {"stream_events": sum(stream.values()), "exported_events": sum(export.values()),
                  "export_files": len(files)}  # fmt: skip


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
    env = {**os.environ, "TWOTOWER_SERVE_RELOAD_POLL_S": "0.5", "TF_CPP_MIN_LOG_LEVEL": "2"}
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


def verdict(run: Run, seen: dict[str, Any], logged: Counter[tuple[str, str]]) -> dict[str, Any]:
    """The figures and the checks, from what the clients saw and what the log holds."""
    tally: Tally = seen["tally"]
    ours = {k: n for k, n in logged.items() if k[1].startswith("soak-")}
    lost = [k for k in tally.acked if logged.get(k, 0) == 0]
    duplicated = [k for k, n in ours.items() if n > 1]
    unacked = [k for k in ours if k not in tally.acked and k[1] != "soak-probe-down"]
    wrk_status = {int(k): v for k, v in seen["wrk"].get("status", {}).items()}
    rec_5xx = sum(n for s, n in tally.recommend_status.items() if s >= 500)
    rec_5xx += sum(n for s, n in wrk_status.items() if s >= 500)
    ev_5xx_other = sum(n for s, n in tally.event_status.items() if s >= 500 and s != 503)
    growth = seen["rss_end"] / max(1, seen["rss_warm"]) - 1
    figures = {
        "duration_s": run.duration,
        "events_acknowledged": len(tally.acked),
        "event_calls_acknowledged": tally.acked_calls,
        "event_calls_resent": tally.resent_calls,
        "events_lost": len(lost),
        "events_duplicated": len(duplicated),
        "events_written_unacknowledged": len(unacked),
        "event_status": {str(k): v for k, v in sorted(tally.event_status.items())},
        "event_503_retries": tally.retries,
        "recommend_checked": sum(tally.recommend_status.values()),
        "recommend_status": {str(k): v for k, v in sorted(tally.recommend_status.items())},
        "recommend_degraded": tally.degraded,
        "versions_seen": dict(tally.versions_seen),
        "mixed_versions": len(tally.mixed_versions),
        "disliked_items_shown": len(tally.disliked_shown),
        "short_lists": tally.short_lists,
        "wrk": seen["wrk"],
        "rss_warm_mb": round(seen["rss_warm"] / 2**20, 1),
        "rss_end_mb": round(seen["rss_end"] / 2**20, 1),
        "rss_growth": round(growth, 3),
        "rss_margin": MEMORY_MARGIN,
        "faults": run.faults,
        "examples": {"lost": lost[:5], "duplicated": duplicated[:5], "mixed": tally.mixed_versions[:5],
                     "disliked_shown": tally.disliked_shown[:5], "errors": tally.errors[:10]},
    }  # fmt: skip
    checks = {
        "fault schedule completed": seen["failure"] is None,
        "0 acknowledged events lost": not lost,
        "0 events duplicated in the log": not duplicated,
        "every unacknowledged write was retried to an ack": not unacked,
        "a resent call is all duplicates": tally.resent_not_duplicates == 0,
        "0 answers mixing versions": not tally.mixed_versions,
        "0 acknowledged dislikes shown": not tally.disliked_shown,
        "exactly k items": tally.short_lists == 0,
        "0 recommend 5xx": rec_5xx == 0,
        "0 event 5xx other than 503": ev_5xx_other == 0,
        "every 503 carries Retry-After": tally.event_503_without_retry_after == 0,
        "no other client errors": not [e for e in tally.errors if "HTTPError" not in e],
        f"memory within +{MEMORY_MARGIN:.0%} of warm-up": growth <= MEMORY_MARGIN,
    }
    f = run.faults
    if "redis_restart" in f:
        r = f["redis_restart"]
        checks["redis down: recommend degraded"] = r["recommend_while_down"] == {
            "status": 200, "degraded": True}  # fmt: skip
        checks["redis down: events 503 + Retry-After"] = (
            r["events_while_down"]["status"] == 503
            and r["events_while_down"]["retry_after"] is not None
        )
        checks["redis back: recovered by itself"] = r["recovered_after_s"] is not None
    for c in f.get("corrupt_versions", []):
        good = f["reload_1"]["version"]
        checks[f"corrupt ({c['fault']}): last good version served"] = c["served"] == good
        checks[f"corrupt ({c['fault']}): stale metric, readyz detail, log"] = bool(
            c["stale_metric"] == 1
            and c["logged"]
            and c["version"] in str(c["readyz"].get("detail"))
        )
    disk = f.get("disk_full", {})
    if disk.get("run"):
        checks["volume full: pipeline failed, nothing published"] = (
            disk["exit_code"] != 0 and disk["latest_unchanged"] and disk["new_version_dirs"] == 0
        )
    if disk:
        checks["space back: next pipeline published"] = bool(disk.get("next_run_published"))
    for name in ("reload_1", "reload_2"):
        checks[f"{name}: new version served"] = name in f
        if name in f:
            checks[f"{name}: answered the clients"] = tally.versions_seen[f[name]["version"]] > 0
    return {"figures": figures, "checks": checks, "passed": all(checks.values())}


def markdown(doc: dict[str, Any]) -> str:
    fig = doc["figures"]
    lines = [
        f"# Soak with faults ({doc['name']})",
        "",
        f"`{doc['command']}` at {doc['git_revision']}, {doc['machine']['cores']} cores; "
        f"{fig['duration_s']:.0f} s of traffic; {'wrk' if fig['wrk'].get('used') else 'Python clients'}"
        " for recommend load.",
        "",
        "| check | result |",
        "|---|---|",
        *[f"| {name} | {'pass' if ok else '**FAIL**'} |" for name, ok in doc["checks"].items()],
        "",
        "| figure | value |",
        "|---|---|",
    ]
    for key in ("events_acknowledged", "events_lost", "events_duplicated", "event_status",
                "event_503_retries", "recommend_checked", "recommend_status", "recommend_degraded",
                "versions_seen", "mixed_versions", "disliked_items_shown", "rss_warm_mb",
                "rss_end_mb", "rss_growth"):  # fmt: skip
        lines.append(f"| {key} | {json.dumps(fig[key])} |")
    if fig["wrk"].get("used"):
        w = fig["wrk"]
        lines.append(
            f"| wrk recommend (c=8) | {w['req_per_s']} req/s, p99 {w['p99_ms']} ms, status {w['status']} |"
        )
    disk = fig["faults"].get("disk_full", {})
    if disk.get("not_run"):
        lines.append(f"| disk-full fault | not run: {disk['not_run']} |")
    lines.append("")
    return "\n".join(lines)


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


def main(argv: list[str] | None = None) -> int:
    from bench.common import RESULTS, git_revision, machine_facts

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=180, help="seconds of traffic (default 180)")
    p.add_argument("--name", default="soak", help="result file stem (default soak)")
    p.add_argument(
        "--out", type=Path, default=RESULTS, help="result directory (default bench/results)"
    )
    p.add_argument("--volume-mb", type=int, default=256, help="size of the artifact tmpfs")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twotower-soak-") as tmp:
        run, seen, logged = asyncio.run(soak(Path(tmp), args.duration, args.volume_mb))
        result = verdict(run, seen, logged)
        server_log_tail = run.server_log()[-3000:]
    doc = {
        "name": args.name,
        "command": " ".join(
            ["python -m bench.soak", *(argv if argv is not None else sys.argv[1:])]
        ),
        "git_revision": git_revision(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_facts("tensorflow", "faiss", "redis"),
        "timeline": run.log,
        **result,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    (args.out / f"{args.name}.md").write_text(markdown(doc))
    print(markdown(doc))
    if not result["passed"]:
        print("server log (tail):\n" + server_log_tail, file=sys.stderr)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
