"""Feature-store latency and throughput, side by side in one run.

Compared on the same machine, same Redis server, same keys:

  * state read of one user (200 positives, 50 dislikes): ``RedisStore.get_user``,
    ``SQLiteStore.get_user``, and raw ``redis.asyncio`` on the same keys: the
    same LRANGE + ZRANGE in one pipeline (the floor for our read), a single
    LRANGE and a single GET (the floor of any Redis round trip);
  * one-event append: ``RedisStore.append_events`` (Lua: idempotency record,
    XADD, erasure index, state change), ``SQLiteStore.append_events`` (one
    fsynced transaction, shared by concurrent calls), and raw redis-py
    RPUSH + LTRIM (a bare, non-idempotent, unlogged write) and raw XADD;
  * batch append (1,000 events per call) throughput for both stores.

The Redis figures come from the given server (``--redis``, usually without
AOF) and, in the same run, from a private ``redis-server`` started with
``appendonly yes, appendfsync everysec`` (``redis_store_aof_everysec``), the
durability a production deployment runs with; ``servers`` in the JSON says
which had AOF on.

Sequential figures are one client awaiting each call (latency p50/p99, ops/s);
``concurrent`` runs ``--concurrency`` tasks on one event loop (ops/s).
The figure that matters is the ratio to raw redis-py.

Usage:
  python -m bench.feature_store [--seconds 2.0] [--concurrency 16] [--redis redis://127.0.0.1:6379/2]
      [--no-aof-server]
Writes bench/results/feature_store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import shutil
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.utils import HIREDIS_AVAILABLE

from bench.common import write_result
from feature_store import Event, open_store
from feature_store.redis.keys import Keys

T0 = 1_700_000_000.0
USER = "bench-user"


def _percentile(sorted_ns: list[int], q: float) -> float:
    idx = min(len(sorted_ns) - 1, round(q * (len(sorted_ns) - 1)))
    return sorted_ns[idx] / 1e6


async def measure(
    op: Callable[[], Awaitable[Any]], seconds: float, concurrency: int
) -> dict[str, Any]:
    """Sequential latency (p50/p99 ms, ops/s) for ``seconds``, then concurrent ops/s for ``seconds``."""
    for _ in range(50):  # warm-up: connections, scripts, caches
        await op()
    lat: list[int] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter_ns()
        await op()
        lat.append(time.perf_counter_ns() - t)
    lat.sort()
    done = 0

    async def worker(deadline: float) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await op()
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(start + seconds) for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {
        "n": len(lat),
        "p50_ms": round(_percentile(lat, 0.50), 4),
        "p99_ms": round(_percentile(lat, 0.99), 4),
        "mean_ms": round(statistics.fmean(lat) / 1e6, 4),
        "ops_per_s": round(len(lat) / (sum(lat) / 1e9), 1),
        "concurrent_ops_per_s": round(done / elapsed, 1),
    }


def _seed_events() -> list[Event]:
    pos = [Event(f"seed-p{i}", USER, f"item{i}", "like", T0 + i, 0.0) for i in range(200)]
    dis = [Event(f"seed-d{i}", USER, f"bad{i}", "dislike", T0 + i + 0.5, 0.0) for i in range(50)]
    return pos + dis


def _counter_events(tag: str) -> Callable[[int], list[Event]]:
    ids = itertools.count()

    def make(n: int) -> list[Event]:
        now = time.time()
        return [
            Event(
                f"{tag}-{next(ids)}",
                USER,
                f"new{i % 500}",
                "like" if i % 5 else "dislike",
                now,
                0.0,
            )
            for i in range(n)
        ]

    return make


@contextlib.contextmanager
def aof_server() -> Iterator[str]:
    """A private redis-server with ``appendonly yes, appendfsync everysec``; yields its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed; run with --no-aof-server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", tmp,
             "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            client = redis.Redis(port=port, socket_timeout=0.5)
            deadline = time.monotonic() + 10
            while True:
                try:
                    if client.ping():
                        break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise
                time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.kill()
            proc.wait(10)


async def redis_store_figures(url: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """Read, one-event append and batch append figures of RedisStore on the server at ``url``."""
    store = open_store(f"{url}?prefix=bench{uuid.uuid4().hex[:8]}&socket_timeout=5")
    await store.open()
    try:
        await store.append_events(_seed_events())
        nxt = _counter_events("a")
        read = await measure(lambda: store.get_user(USER), seconds, concurrency)
        append = await measure(lambda: store.append_events(nxt(1)), seconds, concurrency)
        t = time.perf_counter()
        total = sum([(await store.append_events(nxt(1000))).accepted for _ in range(10)])
        batch = {"events": total, "events_per_s": round(total / (time.perf_counter() - t), 1)}
        return {
            "read": read,
            "append": append,
            "batch": batch,
            "durability": getattr(store, "durability", {}),
        }
    finally:
        await store.close()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    redis_url = f"{args.redis}?prefix={prefix}&socket_timeout=5"
    out: dict[str, Any] = {"settings": {"seconds": args.seconds, "concurrency": args.concurrency}}
    with tempfile.TemporaryDirectory() as tmp:
        sqlite_url = f"sqlite:///{Path(tmp) / 'bench.sqlite'}"
        rstore, sstore = open_store(redis_url), open_store(sqlite_url)
        await rstore.open()
        await sstore.open()
        raw = aioredis.from_url(args.redis, decode_responses=True)
        uk = Keys(prefix).user(USER)
        try:
            for store in (rstore, sstore):
                await store.append_events(_seed_events())
            state = await rstore.get_user(USER)
            assert state == await sstore.get_user(USER), (
                "the two stores disagree on the seeded state"
            )
            assert len(state.positives) == 200 and len(state.dislikes) == 50
            await raw.set(f"{prefix}:bench:get", "x" * 64)

            async def raw_pipeline() -> Any:
                pipe = raw.pipeline(transaction=False)
                pipe.lrange(uk.pos, -200, -1)
                pipe.zrange(uk.dis, -200, -1, withscores=True)
                return await pipe.execute()

            s = args.seconds
            c = args.concurrency
            print("reads ...", file=sys.stderr)
            reads = {
                "redis_store": await measure(lambda: rstore.get_user(USER), s, c),
                "sqlite_store": await measure(lambda: sstore.get_user(USER), s, c),
                "raw_redis_lrange_zrange_pipeline": await measure(raw_pipeline, s, c),
                "raw_redis_lrange": await measure(lambda: raw.lrange(uk.pos, -200, -1), s, c),
                "raw_redis_get": await measure(lambda: raw.get(f"{prefix}:bench:get"), s, c),
            }
            floor = reads["raw_redis_lrange_zrange_pipeline"]
            for name in ("redis_store", "sqlite_store"):
                reads[name]["p50_ratio_to_raw_pipeline"] = round(
                    reads[name]["p50_ms"] / floor["p50_ms"], 2
                )
                reads[name]["ops_ratio_to_raw_pipeline"] = round(
                    reads[name]["ops_per_s"] / floor["ops_per_s"], 3
                )
            out["state_read"] = reads

            print("appends ...", file=sys.stderr)
            rnext, snext = _counter_events("r"), _counter_events("s")
            raw_ids = itertools.count()

            async def raw_push() -> Any:
                pipe = raw.pipeline(transaction=False)
                pipe.rpush(f"{prefix}:bench:list", f"{time.time()}|new{next(raw_ids) % 500}")
                pipe.ltrim(f"{prefix}:bench:list", -200, -1)
                return await pipe.execute()

            appends = {
                "redis_store": await measure(lambda: rstore.append_events(rnext(1)), s, c),
                "sqlite_store": await measure(lambda: sstore.append_events(snext(1)), s, c),
                "raw_redis_rpush_ltrim": await measure(raw_push, s, c),
                "raw_redis_xadd": await measure(
                    lambda: raw.xadd(f"{prefix}:bench:stream", {"e": str(next(raw_ids))}), s, c
                ),
            }
            floor = appends["raw_redis_rpush_ltrim"]
            for name in ("redis_store", "sqlite_store"):
                appends[name]["p50_ratio_to_raw_rpush_ltrim"] = round(
                    appends[name]["p50_ms"] / floor["p50_ms"], 2
                )
            out["event_append"] = appends

            print("batch appends ...", file=sys.stderr)
            batch = {}
            for name, store, make in (
                ("redis_store", rstore, rnext),
                ("sqlite_store", sstore, snext),
            ):
                t = time.perf_counter()
                total = 0
                for _ in range(10):
                    res = await store.append_events(make(1000))
                    total += res.accepted
                batch[name] = {
                    "events": total,
                    "events_per_s": round(total / (time.perf_counter() - t), 1),
                }
            out["batch_append_1000"] = batch
            durability = getattr(rstore, "durability", {})
            server = await raw.info("server")
            out["servers"] = {
                "redis_server": server.get("redis_version"),
                "redis_location": args.redis,
                "redis_aof": durability,
                "sqlite": sqlite3.sqlite_version,
            }
            if args.aof_server:
                print("the same on a private redis-server with AOF (everysec) ...", file=sys.stderr)
                with aof_server() as aof_url:
                    aof = await redis_store_figures(aof_url, s, c)
                name = "redis_store_aof_everysec"
                out["state_read"][name] = aof["read"]
                out["event_append"][name] = aof["append"]
                out["batch_append_1000"][name] = aof["batch"]
                out["servers"]["redis_aof_everysec_server"] = {
                    "location": "private redis-server started by this benchmark",
                    "aof": aof["durability"],
                }
            out["notes"] = {
                "redis_server_durability": durability,
                "sqlite": "WAL, synchronous=FULL: every acknowledged append is fsynced; "
                "concurrent appends share one transaction (group commit)",
                "redis_client": "redis-py asyncio, "
                + ("hiredis reply parser" if HIREDIS_AVAILABLE else "pure-Python reply parser"),
            }
        finally:
            keys = [k async for k in raw.scan_iter(match=f"{prefix}:*", count=1000)]
            for i in range(0, len(keys), 500):
                await raw.delete(*keys[i : i + 500])
            await raw.aclose()
            await rstore.close()
            await sstore.close()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per measurement phase")
    parser.add_argument("--concurrency", type=int, default=16, help="tasks in the concurrent phase")
    parser.add_argument(
        "--redis", default="redis://127.0.0.1:6379/2", help="Redis URL (no query string)"
    )
    parser.add_argument(
        "--no-aof-server",
        dest="aof_server",
        action="store_false",
        help="skip the private redis-server with AOF (appendfsync everysec)",
    )
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args))
    path = write_result("feature_store", figures, packages=("redis", "hiredis", "pyarrow", "anyio"))
    for section in ("state_read", "event_append"):
        print(f"{section}:")
        for name, row in figures[section].items():
            print(
                f"  {name:34s} p50 {row['p50_ms']:7.3f} ms  p99 {row['p99_ms']:7.3f} ms  "
                f"{row['ops_per_s']:9.1f} ops/s  (x{args.concurrency}: {row['concurrent_ops_per_s']:9.1f} ops/s)"
            )
    print(f"batch_append_1000: {figures['batch_append_1000']}")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
