"""Batch state reads on Redis: the READ script against a pipeline of commands, side by side.

``RedisStore.get_users`` for a batch of users (as the serving batcher reads
them), with ``read_script=true`` (one Lua READ call per ``READ_CHUNK`` users,
in one pipeline) and ``read_script=false`` (LRANGE + ZRANGE + ZRANGE per user,
in one pipeline), on the same keys of one Redis server, in alternating rounds
so both see the same machine. Per user read, three figures:

* wall: the call's elapsed time;
* client CPU: this process's CPU time (what a serving worker spends);
* Redis CPU: the server's main-thread CPU (``INFO cpu``; Redis runs one
  command or script at a time, so this is what the store's capacity pays).

Users hold ``--events`` events each (a like, a dislike and two views in every
four), for each size given. Both modes must return the same states (checked).

Usage:
  python -m bench.store_reads [--redis redis://127.0.0.1:6379/9] [--events 30 100 400]
      [--users 32] [--rounds 30] [--calls 20]
Writes bench/results/store_reads.json and .md.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis

from bench.common import write_report
from feature_store import OnlineStore, open_store
from feature_store.events import make_event
from feature_store.redis import store as redis_store

T0 = 1_700_000_000.0
MODES = ("script", "pipeline")


def _events(users: int, per_user: int) -> list[Any]:
    kinds = ("like", "dislike", "view", "view")
    return [
        make_event(
            {
                "event_id": f"{u}-{i}",
                "user_id": f"u{u}",
                "item_id": f"i{(u * 7 + i) % 5000}",
                "type": kinds[i % 4],
                "ts": T0 + i + 0.25,
            }
        )
        for u in range(users)
        for i in range(per_user)
    ]


def _redis_cpu(client: redis.Redis) -> float:
    info = client.info("cpu")
    return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])


async def measure(url: str, per_user: int, args: argparse.Namespace) -> dict[str, Any]:
    """Both modes on users of ``per_user`` events: medians over rounds, per user read."""
    prefix = f"storereads{uuid.uuid4().hex[:8]}"
    stores: dict[str, OnlineStore] = {}
    info = redis.Redis.from_url(url.split("?", 1)[0])
    try:
        for mode in MODES:
            stores[mode] = open_store(
                f"{url}?prefix={prefix}&read_script={str(mode == 'script').lower()}"
            )
            await stores[mode].open()
        events = _events(args.users, per_user)
        for start in range(0, len(events), 1000):
            await stores["script"].append_events(events[start : start + 1000])
        uids = [f"u{u}" for u in range(args.users)]
        states = {m: await stores[m].get_users(uids, with_seen=True) for m in MODES}
        if states["script"] != states["pipeline"]:
            raise AssertionError("the two read modes returned different states")
        figures: dict[str, dict[str, list[float]]] = {
            m: {"wall_us": [], "client_cpu_us": [], "redis_cpu_us": []} for m in MODES
        }
        reads = args.calls * args.users
        for r in range(args.rounds):
            for mode in MODES if r % 2 == 0 else MODES[::-1]:
                wall, cpu, rcpu = time.perf_counter(), time.process_time(), _redis_cpu(info)
                for _ in range(args.calls):
                    await stores[mode].get_users(uids, with_seen=True)
                f = figures[mode]
                f["wall_us"].append((time.perf_counter() - wall) / reads * 1e6)
                f["client_cpu_us"].append((time.process_time() - cpu) / reads * 1e6)
                f["redis_cpu_us"].append((_redis_cpu(info) - rcpu) / reads * 1e6)
        user = states["script"]["u0"]
        out: dict[str, Any] = {
            "events_per_user": per_user,
            "state_per_user": {
                "positives": len(user.positives),
                "dislikes": len(user.dislikes),
                "seen": len(user.seen or ()),
            },
        }
        for mode in MODES:
            out[mode] = {k: round(statistics.median(v), 1) for k, v in figures[mode].items()}
        s, p = out["script"], out["pipeline"]
        out["ratio_script_over_pipeline"] = {k: round(s[k] / p[k], 2) for k in s if p[k] > 0}
        return out
    finally:
        for store in stores.values():
            await store.close()
        for key in info.scan_iter(match=f"{prefix}*", count=1000):
            info.delete(key)


def markdown(doc: dict[str, Any]) -> str:
    s = doc["settings"]
    lines = [
        "# Batch state reads on Redis: READ script against pipelined commands",
        "",
        f"`{doc['command']}` at {doc['git_revision'][:7]}, {doc['finished_at']}. "
        f"`get_users` of {s['users']} users with seen, {s['calls']} calls per round, median of "
        f"{s['rounds']} alternating rounds; READ_CHUNK = {s['read_chunk']} users per script call. "
        "Microseconds per user read.",
        "",
        "| events per user (positives / dislikes / seen read) | mode | wall | client CPU | "
        "Redis CPU | client + Redis CPU |",
        "|---|---|---|---|---|---|",
    ]
    for row in doc["results"]:
        st = row["state_per_user"]
        size = f"{row['events_per_user']} ({st['positives']} / {st['dislikes']} / {st['seen']})"
        for mode in MODES:
            f = row[mode]
            both = f["client_cpu_us"] + f["redis_cpu_us"]
            lines.append(
                f"| {size} | {mode} | {f['wall_us']} | {f['client_cpu_us']} | "
                f"{f['redis_cpu_us']} | {both:.1f} |"
            )
        ratio = row["ratio_script_over_pipeline"]
        lines.append(
            f"| {size} | **script / pipeline** | {ratio.get('wall_us')} | "
            f"{ratio.get('client_cpu_us')} | {ratio.get('redis_cpu_us')} | |"
        )
    lines += [
        "",
        "<!-- headline:end -->",
        "",
        "The script saves the client the redis-py work of one command frame and one reply per "
        "key; Redis pays for copying each reply through Lua. `read_script=false` in the store "
        "URL picks the commands (a cluster always uses them).",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--redis", default="redis://127.0.0.1:6379/9", help="server and DB (no query)")
    p.add_argument("--events", type=int, nargs="+", default=[30, 100, 400])
    p.add_argument("--users", type=int, default=32, help="users per get_users call")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--calls", type=int, default=20, help="get_users calls per round")
    p.add_argument("--out", default="store_reads")
    args = p.parse_args(argv)

    async def run() -> list[dict[str, Any]]:
        return [await measure(args.redis, n, args) for n in args.events]

    results = asyncio.run(run())
    settings = {
        "users": args.users,
        "rounds": args.rounds,
        "calls": args.calls,
        "read_chunk": redis_store.READ_CHUNK,
        "redis": args.redis,
    }
    figures = {"settings": settings, "results": results}
    print(write_report(args.out, figures, markdown, packages=("redis", "hiredis")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
