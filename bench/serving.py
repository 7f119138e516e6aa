"""Serving throughput and latency, side by side in one run (not a test).

For each corpus (a synthetic 1M-item, dim-64 catalog behind an IVF index, and
the ml-100k catalog behind an exact index), against one ``twotower serve``
process on a loopback port with a real Redis store:

  * ``floor``: ``POST /_floor`` (same server, same body parsing, fixed answer);
  * ``recommend``: ``POST /v1/recommend`` for random stored users (k=20);
  * ``in-process``: the same work without HTTP (store read + tower call +
    FAISS search + filtering) timed in this process;
  * ``recommend, batch 1``: the server restarted with ``batch_max_size=1``.

Latency p50/p99 at concurrency 1 and throughput at concurrency 32 come from
``wrk`` (POST bodies via a Lua script). Results: ``bench/results/serving.json``
and ``serving.md``.

    python -m bench.serving                       # full run
    python -m bench.serving --items 200000 --duration 5   # reduced
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RESULTS, SHARED_DATA, write_result

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

#: A Redis database of its own (the serving tests flush DBs 3 and 4).
REDIS_URL = "redis://127.0.0.1:6379/10"
THREADS = {"TWOTOWER_SERVE_TF_THREADS": "1", "TWOTOWER_SERVE_FAISS_THREADS": "1"}

LUA = """
math.randomseed(%(seed)d)
local users = %(users)d
request = function()
  local u = math.random(0, users - 1)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"},
    '{"user_id": "bench-u' .. u .. '", "k": 20}')
end
"""


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def run_wrk(
    url: str, path: str, users: int, connections: int, duration: int, tmp: Path
) -> dict[str, Any]:
    """One wrk run; returns requests/s, p50/p99 latency (ms) and non-2xx count."""
    script = tmp / f"post-{abs(hash(path))}.lua"
    script.write_text(LUA % {"seed": 7, "users": users, "path": path})
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "connections": connections,
        "requests_per_s": rps,
        "p50_ms": _ms(pct.get("50", "nan")),
        "p99_ms": _ms(pct.get("99", "nan")),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else None,
    }


def load_users(num_users: int, catalog: list[str], seed: int, ml100k: Path | None) -> None:
    """Write ``bench-u<i>`` users into the bench's Redis DB: ml-100k users' own ratings, else random clicks."""
    import redis

    from feature_store import open_store
    from feature_store.events import make_event

    redis.Redis.from_url(REDIS_URL).flushdb()
    rng = np.random.default_rng(seed)
    raw: list[dict[str, Any]] = []
    if ml100k is not None:
        rows = np.loadtxt(ml100k / "u.data", dtype=np.int64)
        users = sorted(set(rows[:, 0].tolist()))[:num_users]
        index = {u: i for i, u in enumerate(users)}
        for uid, item, rating, ts in rows[np.argsort(rows[:, 3], kind="stable")].tolist():
            if uid in index and rating != 3:
                etype = "click" if rating >= 4 else "dislike"
                raw.append(
                    {
                        "event_id": f"b{uid}-{item}-{ts}",
                        "user_id": f"bench-u{index[uid]}",
                        "item_id": str(item),
                        "type": etype,
                    }
                )
    else:
        for u in range(num_users):
            for j, item in enumerate(rng.choice(len(catalog), 30, replace=False).tolist()):
                etype = "dislike" if j % 6 == 5 else "click"
                raw.append(
                    {
                        "event_id": f"b{u}-{j}",
                        "user_id": f"bench-u{u}",
                        "item_id": catalog[item],
                        "type": etype,
                    }
                )

    async def write() -> None:
        async with open_store(REDIS_URL) as store:
            for start in range(0, len(raw), 2000):
                await store.append_events([make_event(r) for r in raw[start : start + 2000]])

    asyncio.run(write())


def in_process(art: Path, users: int, iterations: int) -> dict[str, Any]:
    """The same work as /v1/recommend without HTTP: store read + tower + FAISS + filtering."""
    from common import artifacts
    from feature_store import open_store
    from serving.model import configure_threads, load_model
    from serving.retrieval import Query, run_batch

    configure_threads(1, 1)
    model = load_model(art, artifacts.latest_version(art))
    rng = np.random.default_rng(3)

    async def one(store: Any, user: str) -> None:
        state = await store.get_user(user, with_seen=True)
        dislikes = [x for x, _ in state.dislikes]
        blocked = {
            model.id_to_index[x]
            for x in (set(dislikes) | set(state.positives) | (state.seen or set()))
            if x in model.id_to_index
        }
        q = Query(
            model=model,
            k=20,
            blocked=blocked,
            history=model.tokens(state.positives, model.history_length),
            dislikes=model.tokens(dislikes, model.dislike_length),
        )
        run_batch([q])

    async def go() -> dict[str, Any]:
        async with open_store(REDIS_URL) as store:
            for _ in range(20):
                await one(store, f"bench-u{rng.integers(users)}")
            times = []
            for _ in range(iterations):
                t0 = time.perf_counter()
                await one(store, f"bench-u{rng.integers(users)}")
                times.append((time.perf_counter() - t0) * 1000)
            # Batch of 32 queries in one tower call + one search (the server's batched path).
            h = np.stack(
                [
                    model.tokens(
                        [str(model.item_ids[i]) for i in rng.integers(0, model.num_items, 20)],
                        model.history_length,
                    )
                    for _ in range(32)
                ]
            )
            d = np.zeros((32, model.dislike_length), np.int32)
            qs = [Query(model=model, k=20, history=h[i], dislikes=d[i]) for i in range(32)]
            t0 = time.perf_counter()
            reps = max(3, iterations // 32)
            for _ in range(reps):
                run_batch(qs)
            per_query_batched = (time.perf_counter() - t0) * 1000 / (reps * 32)
        return {
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
            "per_query_ms_in_batches_of_32": per_query_batched,
            "iterations": iterations,
        }

    return asyncio.run(go())


def bench_corpus(name: str, art: Path, users: int, duration: int, tmp: Path) -> dict[str, Any]:
    from common import artifacts
    from tests.serving.server import running_server

    manifest = artifacts.read_manifest(art)
    out: dict[str, Any] = {
        "corpus": name,
        "num_items": manifest["num_items"],
        "index": manifest["index"],
    }
    env = {**THREADS, "TWOTOWER_SERVE_FLOOR_ROUTE": "true", "TWOTOWER_SERVE_RELOAD_POLL_S": "3600"}
    with running_server(art, REDIS_URL, timeout_s=600, **env) as srv:
        for label, path in (("floor", "/_floor"), ("recommend", "/v1/recommend")):
            run_wrk(srv.url, path, users, 1, 2, tmp)  # warm-up
            out[label] = {
                "c1": run_wrk(srv.url, path, users, 1, duration, tmp),
                "c32": run_wrk(srv.url, path, users, 32, duration, tmp),
            }
            print(f"  {name} {label}: {out[label]}", file=sys.stderr)
    with running_server(
        art, REDIS_URL, timeout_s=600, TWOTOWER_SERVE_BATCH_MAX_SIZE="1", **env
    ) as srv:
        run_wrk(srv.url, "/v1/recommend", users, 1, 2, tmp)
        out["recommend_batch1"] = {
            "c32": run_wrk(srv.url, "/v1/recommend", users, 32, duration, tmp)
        }
        print(f"  {name} batch 1: {out['recommend_batch1']}", file=sys.stderr)
    out["in_process"] = in_process(art, users, iterations=300)
    print(f"  {name} in-process: {out['in_process']}", file=sys.stderr)
    rec, floor, inproc = out["recommend"], out["floor"], out["in_process"]
    out["ratios"] = {
        "http_over_in_process_p50_c1": rec["c1"]["p50_ms"] / inproc["p50_ms"],
        "recommend_over_floor_p50_c1": rec["c1"]["p50_ms"] / floor["c1"]["p50_ms"],
        "recommend_over_floor_rps_c32": rec["c32"]["requests_per_s"]
        / floor["c32"]["requests_per_s"],
        "batching_gain_rps_c32": rec["c32"]["requests_per_s"]
        / out["recommend_batch1"]["c32"]["requests_per_s"],
    }
    return out


def make_corpora(args: argparse.Namespace, tmp: Path) -> list[tuple[str, Path, int, Path | None]]:
    from tests.serving.artifact_factory import make_artifact

    corpora = []
    if args.items > 0:
        art = tmp / "synthetic"
        t0 = time.perf_counter()
        nlist = args.nlist or int(4 * np.sqrt(args.items))
        make_artifact(
            art,
            num_items=args.items,
            dim=64,
            H=20,
            D=10,
            seed=1,
            index_type="ivf",
            index_params={"nlist": nlist, "nprobe": args.nprobe},
            num_popular=1000,
            clusters=args.clusters,
        )
        print(
            f"built synthetic {args.items}-item IVF artifact in {time.perf_counter() - t0:.0f}s",
            file=sys.stderr,
        )
        corpora.append((f"synthetic-{args.items}", art, None))
    ml = SHARED_DATA / "ml-100k"
    if (ml / "u.data").is_file() and not args.skip_ml100k:
        items = sorted(set(np.loadtxt(ml / "u.data", dtype=np.int64, usecols=1).tolist()))
        art = tmp / "ml100k"
        if args.factory_ml100k:
            make_artifact(
                art, num_items=len(items), dim=64, H=20, D=10, seed=2, ids=[str(i) for i in items]
            )
        else:
            # The real thing: a model trained by `twotower train` on ml-100k (short run).
            from trainer.run import train, trainer_config

            t0 = time.perf_counter()
            spec = f"movielens:{ml / 'u.data'}"
            train(
                spec, art, trainer_config("movielens", overrides=["train.epochs=3"]), progress=False
            )
            print(f"trained ml-100k artifact in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        corpora.append(("ml-100k", art, ml))
    return [(n, a, args.users if ml_dir is None else 943, ml_dir) for n, a, ml_dir in corpora]


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Serving benchmark",
        "",
        f"`{doc['command']}` at {doc['git_revision']}, {doc['machine']['cores']} cores ({doc['machine']['cpu']}).",
        f"Threads: {doc['threads']}.",
        f"GC: {doc['gc']}." if "gc" in doc else "",
        "",
        "| corpus | endpoint | p50 ms (c=1) | p99 ms (c=1) | req/s (c=32) | p99 ms (c=32) |",
        "|---|---|---|---|---|---|",
    ]
    for c in doc["corpora"]:
        for label, key in (("floor (/_floor)", "floor"), ("/v1/recommend", "recommend")):
            r = c[key]
            lines.append(
                f"| {c['corpus']} | {label} | {r['c1']['p50_ms']:.2f} | {r['c1']['p99_ms']:.2f} | {r['c32']['requests_per_s']:.0f} | {r['c32']['p99_ms']:.1f} |"
            )
        b = c["recommend_batch1"]["c32"]
        lines.append(
            f"| {c['corpus']} | /v1/recommend, batch_max_size=1 | | | {b['requests_per_s']:.0f} | {b['p99_ms']:.1f} |"
        )
        ip = c["in_process"]
        lines.append(
            f"| {c['corpus']} | in-process (store+tower+FAISS+filter) | {ip['p50_ms']:.2f} | {ip['p99_ms']:.2f} | | |"
        )
    lines += [
        "",
        "| corpus | HTTP/in-process p50 | recommend/floor p50 | recommend/floor req/s | batching gain (req/s, c=32) |",
        "|---|---|---|---|---|",
    ]
    for c in doc["corpora"]:
        r = c["ratios"]
        lines.append(
            f"| {c['corpus']} | {r['http_over_in_process_p50_c1']:.2f} | {r['recommend_over_floor_p50_c1']:.2f} | {r['recommend_over_floor_rps_c32']:.2f} | {r['batching_gain_rps_c32']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--items", type=int, default=1_000_000, help="synthetic corpus size (0 = skip)")
    p.add_argument("--nlist", type=int, default=0, help="IVF lists (default 4*sqrt(items))")
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument(
        "--clusters", type=int, default=2000, help="topic centres of the synthetic item vectors"
    )
    p.add_argument("--users", type=int, default=1000, help="stored synthetic users")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--skip-ml100k", action="store_true")
    p.add_argument(
        "--factory-ml100k",
        action="store_true",
        help="ml-100k catalog with made-up vectors instead of a model trained by `twotower train`",
    )
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory(prefix="twotower-bench-") as d:
        tmp = Path(d)
        for name, art, users, ml_dir in make_corpora(args, tmp):
            load_users(users, _catalog(art), 0, ml_dir)
            results.append(bench_corpus(name, art, users, args.duration, tmp))
    figures = {
        "threads": "1 uvicorn worker (uvloop, httptools); TF intra/inter-op 1; faiss.omp_set_num_threads(1); "
        "wrk -t1; 2 shared cores: one for the server, one for wrk and Redis",
        "settings": {"batch_max_size": 64, "batch_max_wait_ms": 1.0, "k": 20},
        "gc": "one gc.collect() + gc.freeze() at start-up (serving.app), so full collections "
        "no longer traverse the ~300k objects TensorFlow's import leaves (a ~200 ms pause each)",
        "towers": {
            "synthetic": "test-fixture tower (normalised mean of history vectors) over made-up item vectors",
            "ml-100k": "made-up vectors (fixture)"
            if args.factory_ml100k
            else "trained by twotower train (3 epochs)",
        },
        "corpora": results,
    }
    path = write_result(
        "serving",
        figures,
        packages=("fastapi", "uvicorn", "faiss-cpu", "faiss-gpu", "tensorflow", "redis"),
    )
    doc = json.loads(path.read_text())
    (RESULTS / "serving.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


def _catalog(art: Path) -> list[str]:
    from common import artifacts

    with np.load(
        artifacts.version_dir(art, artifacts.latest_version(art)) / artifacts.ITEMS
    ) as npz:
        return [str(x) for x in npz["ids"]]


if __name__ == "__main__":
    sys.exit(main())
