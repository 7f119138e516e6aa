"""The soak's clients: event writers that log every acknowledgement, answer checkers, wrk, the log reader."""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.soak.environment import catalog

#: Users with stored history (from the synthetic data) and users the model has never seen.
KNOWN_USERS = 300
COLD_USERS = 100
ITEMS = 400
WRITERS = 4
CHECKERS = 2


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
