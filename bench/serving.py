"""Serving throughput and latency against a trivial endpoint, side by side in one run (not a test).

For each synthetic catalog (default 100k and 1M items, trained by ``twotower
train`` for one epoch: the trainer picks the index and records its recall
against exact search), with ``bench-u<i>`` users stored in a real Redis:

  * ``trivial``: a bare FastAPI app (:func:`trivial_app`: a POST that parses the
    JSON body and returns 20 fixed items) under the same uvicorn settings as
    ``twotower serve`` (uvloop, httptools, no access log), same worker count;
  * ``recommend``: ``POST /v1/recommend`` of ``twotower serve`` for random
    stored users (k=20);

both driven by ``wrk`` (a C client; POST bodies from a Lua script), back to
back: concurrency 1 (latency) and 32 (throughput), 1 and 2 uvicorn workers,
and a sweep of concurrencies (p99 against the throughput it reached, plotted
in ``serving_p99.png``). With ``py-spy`` on the PATH (or beside this Python),
the one-worker server is profiled at c=1 and c=32 and the samples are split
into stages (CPU microseconds per request); the collapsed stacks are kept in
``bench/results/<out>_profile_*.txt`` (``--out``, default ``serving``).
``in-process`` is the same work without HTTP (store read + tower + FAISS +
filtering), timed in this process.

Results: ``bench/results/serving.json`` and ``serving.md`` (the README's table
comes from it through ``python -m bench.report``).

    python -m bench.serving                                   # full run
    python -m bench.serving --items 100000 --duration 5       # one catalog, shorter
    python -m bench.serving --factory --items 200000          # made-up vectors, no training
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import REPO, RESULTS, write_result
from common.tf_env import set_tensorflow_environment
from serving.settings import DEMOTE_NEAR, DEMOTE_WEIGHT, Settings

set_tensorflow_environment()  # before anything imports TensorFlow (the servers inherit it)

#: A Redis database of its own (the serving tests flush DBs 3 and 4).
REDIS_URL = "redis://127.0.0.1:6379/10"
THREADS = {"TWOTOWER_SERVE__TF_THREADS": "1", "TWOTOWER_SERVE__FAISS_THREADS": "1"}


def thread_env(workers: int) -> dict[str, str]:
    """TF 1 thread; FAISS as ``twotower serve`` sets it by default (cores / workers).

    Written out so the result records the count each run used.
    """
    count = Settings(artifacts=Path("."), workers=workers).faiss_thread_count()
    return {**THREADS, "TWOTOWER_SERVE__FAISS_THREADS": str(count)}


#: Concurrencies of the sweep (p99 against the throughput reached).
SWEEP = (1, 2, 4, 8, 16, 32, 64)
K = 20

LUA = """
math.randomseed(%(seed)d)
local users = %(users)d
request = function()
  local u = math.random(0, users - 1)
  return wrk.format("POST", "%(path)s", {["Content-Type"] = "application/json"},
    '{"user_id": "bench-u' .. u .. '", "k": %(k)d}')
end
"""

TRIVIAL_ITEMS = [{"item_id": f"i{i}", "score": round(1.0 - i / 100, 2)} for i in range(K)]


def trivial_app() -> Any:
    """The floor: a bare FastAPI POST that parses the JSON body and returns 20 fixed items."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/trivial")
    async def trivial(body: dict[str, Any]) -> dict[str, Any]:
        return {"user_id": body.get("user_id"), "items": TRIVIAL_ITEMS, "model_version": "trivial"}

    return app


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_trivial(workers: int) -> Iterator[str]:
    """:func:`trivial_app` under uvicorn with ``twotower serve``'s options; yields its URL."""
    import importlib.util

    import httpx

    port = _free_port()
    # As serving.main picks them for twotower serve: the fastest loop and parser installed.
    opts = {
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": "httptools" if importlib.util.find_spec("httptools") else "h11",
    }
    cmd = [
        sys.executable, "-m", "uvicorn", "bench.serving:trivial_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--loop", opts["loop"], "--http", opts["http"], "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if (
                    httpx.post(url + "/trivial", json={"user_id": "x"}, timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the trivial endpoint did not start")
            time.sleep(0.2)  # a child process starting: no event to await
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    value, unit = float(m.group(1)), m.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def _wrk_cmd(
    url: str, path: str, users: int, connections: int, duration: float, tmp: Path
) -> list[str]:
    script = tmp / f"post-{path.strip('/').replace('/', '-')}.lua"
    script.write_text(LUA % {"seed": 7, "users": users, "path": path, "k": K})
    threads = 2 if connections >= 64 else 1
    return [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency",
        "-s", str(script), url,
    ]  # fmt: skip


def parse_wrk(out: str, connections: int) -> dict[str, Any]:
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|90|99)%\s+(\S+)", out, re.M))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "connections": connections,
        "requests_per_s": rps,
        "requests": int(total.group(1)) if total else None,
        "p50_ms": _ms(pct.get("50", "nan")),
        "p90_ms": _ms(pct.get("90", "nan")),
        "p99_ms": _ms(pct.get("99", "nan")),
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else None,
    }


def run_wrk(
    url: str, path: str, users: int, connections: int, duration: float, tmp: Path
) -> dict[str, Any]:
    """One wrk run: requests/s, latency percentiles (ms), non-2xx and socket errors."""
    cmd = _wrk_cmd(url, path, users, connections, duration, tmp)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return parse_wrk(out, connections)


# --- profile: py-spy samples split into stages ------------------------------------------------

#: Stage of a sample: the first rule matching its frames, innermost frame first.
STAGES = [
    "parse + validation",
    "store read",
    "tower",
    "FAISS",
    "filtering + merge",
    "serialisation",
    "metrics + middleware",
    "batcher + thread hand-off",
    "HTTP stack (uvicorn, Starlette, FastAPI)",
    "event loop",
]
_RULES: list[tuple[str, tuple[str, ...]]] = [
    ("FAISS", ("LoadedModel.search", "faiss/")),
    ("tower", ("LoadedModel.embed", "tensorflow/")),
    ("serialisation", ("to_json", "serialize_response", "jsonable_encoder", "dump_json",
                       "Response.render", "Response.__init__", "JSONResponse")),
    ("parse + validation", ("body_to_args", "_validate_value", "validate_python", "Request.json",
                            "Request.body", "json/decoder", "json/__init__", "require_json",
                            "is_json", "_check_lists", "model_validate")),
    ("store read", ("feature_store/", "redis/", "StoreReads", "read_user", "hiredis")),
    ("metrics + middleware", ("prometheus_client/", "serving/middleware.py", "serving/metrics.py",
                              "usercache.py")),
    ("filtering + merge", ("serving/retrieval.py", "serving/service.py", "serving/model.py")),
    ("batcher + thread hand-off", ("serving/batcher.py", "concurrent/futures", "threading.py",
                                   "queue.py", "_chain_future")),
    ("HTTP stack (uvicorn, Starlette, FastAPI)", ("uvicorn/protocols", "uvicorn/middleware",
                                                  "starlette/", "fastapi/", "anyio/",
                                                  "serving/routes.py", "serving/deps.py",
                                                  "serving/direct.py",
                                                  "serving/auth.py", "h11/", "httptools")),
]  # fmt: skip


def _source_lines(path: Path, needle: str) -> set[int]:
    try:
        return {i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line}
    except OSError:
        return set()


#: The modules whose lines call the response encoder (see :func:`encode_lines`).
ENCODING_MODULES = ("routes", "direct")


def encode_lines() -> set[tuple[str, int]]:
    """``(module, line)`` of each ``to_json(`` call in serving's :data:`ENCODING_MODULES`."""
    return {
        (module, n)
        for module in ENCODING_MODULES
        for n in _source_lines(REPO / "serving" / f"{module}.py", "to_json(")
    }


def stage_of(frames: list[str], encode_lines: set[tuple[str, int]]) -> str:
    """The stage of one sample (frames outermost first, as py-spy's raw format writes them).

    ``encode_lines``: ``(module, line)`` of serving's calls of the response encoder.
    """
    if frames and "Runner.run" in frames[-1]:
        return "event loop"  # the loop's own work (uvloop's C code shows as Runner.run)
    for frame in reversed(frames):
        m = re.search(r"\(serving/(\w+)\.py:(\d+)\)", frame)
        if m and (m.group(1), int(m.group(2))) in encode_lines:
            return "serialisation"  # the encoder is C: its time shows on the calling line
        for stage, needles in _RULES:
            if any(n in frame for n in needles):
                return stage
    return "event loop"


#: Innermost frames of a thread that waits for work. py-spy counts such a thread as
#: active here (its idle detection does not see the wait), so these samples are left
#: out: the batch thread between batches and uvloop's idle executor thread would
#: otherwise take a share of the CPU time they did not use.
IDLE_LEAVES = (
    "_worker (concurrent/futures/thread.py:",
    "Condition.wait (threading.py:",
    "Event.wait (threading.py:",
    "Thread._wait_for_tstate_lock (threading.py:",
)


def is_idle(frames: list[str]) -> bool:
    """Whether a sample is a thread waiting for work (see :data:`IDLE_LEAVES`)."""
    return bool(frames) and frames[-1].startswith(IDLE_LEAVES)


def split_stages(raw: str) -> tuple[Counter[str], int]:
    """Samples per stage of a py-spy ``--format raw`` profile, and their total.

    Samples of a thread waiting for work (:func:`is_idle`) are not counted.
    """
    encoding = encode_lines()
    stages: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if is_idle(frames):
            continue
        stages[stage_of(frames, encoding)] += int(count)
        total += int(count)
    return stages, total


def restage(doc: dict[str, Any]) -> None:
    """Split the saved profiles of ``doc`` into stages again (after a change of the rules)."""
    for c in doc["corpora"]:
        for prof in c["workers"].get("1", {}).get("profile", {}).values():
            path = RESULTS / prof["profile"]
            if not path.is_file():
                continue
            stages, total = split_stages(path.read_text())
            per = prof["server_cpu_us_per_request"]
            prof["samples"] = total
            prof["stages_us_per_request"] = {
                s: per * stages.get(s, 0) / total if total else float("nan") for s in STAGES
            }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` and its threads so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.is_file() else None)


def profile(
    pid: int,
    url: str,
    users: int,
    connections: int,
    duration: float,
    tmp: Path,
    out_path: Path,
) -> dict[str, Any]:
    """wrk on /v1/recommend while py-spy samples ``pid``: CPU microseconds per request by stage."""
    spy = py_spy()
    assert spy is not None
    window = max(2.0, duration - 2.0)
    wrk = subprocess.Popen(
        _wrk_cmd(url, "/v1/recommend", users, connections, duration, tmp),
        stdout=subprocess.PIPE,
        text=True,
    )
    time.sleep(1.0)  # let the load settle before sampling
    cpu0, t0 = _cpu_seconds(pid), time.perf_counter()
    subprocess.run(
        [spy, "record", "-p", str(pid), "-d", f"{int(window)}", "-r", "250", "--nonblocking",
         "-f", "raw", "-o", str(out_path)],
        check=True, capture_output=True,
    )  # fmt: skip
    cpu, wall = _cpu_seconds(pid) - cpu0, time.perf_counter() - t0
    out, _ = wrk.communicate()
    load = parse_wrk(out, connections)
    stages, total = split_stages(out_path.read_text())
    requests = load["requests_per_s"] * wall
    per_request_us = cpu / requests * 1e6 if requests else float("nan")
    return {
        "connections": connections,
        "load": load,
        "samples": total,
        "server_cpu_s": cpu,
        "window_s": wall,
        "server_cpu_us_per_request": per_request_us,
        "stages_us_per_request": {
            s: per_request_us * stages.get(s, 0) / total if total else float("nan") for s in STAGES
        },
        "profile": out_path.name,
    }


# --- data ---------------------------------------------------------------------------------


#: What soft demotion does in these runs: serving's defaults, and every stored dislike is
#: fresh (stamped when written, after the version's data), so every request demotes.
DEMOTION = (
    f"serving's default: weight {DEMOTE_WEIGHT}, near {DEMOTE_NEAR}, demote_dislikes=fresh; "
    "every stored dislike is fresh here (stamped when written), so every request demotes "
    "near its 5 latest"
)


def load_users(num_users: int, catalog: list[str], seed: int) -> None:
    """Write ``bench-u<i>`` users (30 random events each, 1 in 6 a dislike) into the bench's Redis DB."""
    import redis

    from feature_store import open_store
    from feature_store.events import make_event

    redis.Redis.from_url(REDIS_URL).flushdb()
    rng = np.random.default_rng(seed)
    raw: list[dict[str, Any]] = []
    for u in range(num_users):
        for j, item in enumerate(rng.choice(len(catalog), 30, replace=False).tolist()):
            raw.append(
                {
                    "event_id": f"b{u}-{j}",
                    "user_id": f"bench-u{u}",
                    "item_id": catalog[item],
                    "type": "dislike" if j % 6 == 5 else "click",
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
            k=K,
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
        return {
            "p50_ms": float(np.percentile(times, 50)),
            "p99_ms": float(np.percentile(times, 99)),
            "iterations": iterations,
            "user_tower": model.tower_note,
        }

    return asyncio.run(go())


#: What ``make_catalog(..., factory=True)`` serves, as results describe it.
FACTORY_CATALOG = "test-factory vectors (the trainer's exported mean tower form), IVF-SQ8 nprobe 16"


def make_catalog(
    items: int, users: int, factory: bool, tmp: Path, overrides: Sequence[str] = ()
) -> Path:
    """The synthetic catalog's artifact under ``tmp``, trained for 1 epoch with ``overrides``."""
    art = tmp / f"synthetic-{items}"
    t0 = time.perf_counter()
    if factory:
        from tests.serving.artifact_factory import make_artifact

        make_artifact(
            art,
            num_items=items,
            dim=64,
            H=20,
            D=10,
            seed=1,
            index_type="ivf_sq8",  # the trainer's IVF default (export.ivf_codec)
            index_params={"nlist": int(4 * np.sqrt(items)), "nprobe": 16},
            num_popular=1000,
            clusters=2000,
            tower="mean",  # the trainer's exported form, served in NumPy as a trained one is
        )
    else:
        from trainer.run import train, trainer_config

        spec = f"synthetic:users={users},items={items}"
        config = trainer_config("synthetic", overrides=["train.epochs=1", *overrides])
        train(spec, art, config, progress=False)
    how = "made (test factory)" if factory else "trained (1 epoch)"
    print(f"{how} the {items}-item catalog in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return art


def _catalog(art: Path) -> list[str]:
    from common import artifacts

    with np.load(
        artifacts.version_dir(art, artifacts.latest_version(art)) / artifacts.ITEMS
    ) as npz:
        return [str(x) for x in npz["ids"]]


# --- one catalog --------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def bench_catalog(
    name: str, art: Path, users: int, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    from common import artifacts
    from tests.serving.server import running_server

    manifest = artifacts.read_manifest(art)
    out: dict[str, Any] = {
        "corpus": name,
        "num_items": manifest["num_items"],
        "index": manifest["index"],
        "encoder": (manifest.get("config") or {}).get("model", {}).get("encoder"),
        "data": manifest.get("data"),
        "version": manifest.get("version"),
        "workers": {},
    }
    d = args.duration
    for workers in args.workers:
        res: dict[str, Any] = {}
        env = {**thread_env(workers), "TWOTOWER_SERVE__RELOAD_POLL_S": "3600"}
        with (
            running_server(art, REDIS_URL, workers=workers, timeout_s=900, **env) as srv,
            running_trivial(workers) as trivial_url,
        ):
            targets = {
                "trivial": (trivial_url, "/trivial"),
                "recommend": (srv.url, "/v1/recommend"),
            }
            for url, path in targets.values():
                run_wrk(url, path, users, 32, 3, tmp)  # warm-up (JIT paths, connections, caches)
            for label, (url, path) in targets.items():
                res[label] = {
                    f"c{c}": run_wrk(url, path, users, c, d, tmp)
                    for c in ((1, 32) if workers == 1 else (32,))
                }
                _log(f"  {name} workers={workers} {label}: {res[label]}")
            if workers == 1 and args.sweep:
                res["sweep"] = {
                    label: [run_wrk(url, path, users, c, args.sweep_duration, tmp) for c in SWEEP]
                    for label, (url, path) in targets.items()
                }
                _log(f"  {name} sweep done")
            if workers == 1 and py_spy() is not None:
                res["profile"] = {
                    f"c{c}": profile(
                        srv.proc.pid,
                        srv.url,
                        users,
                        c,
                        d + 2,
                        tmp,
                        RESULTS / f"{args.out}_profile_{name}_c{c}.txt",
                    )
                    for c in (1, 32)
                }
                _log(f"  {name} profiled")
        out["workers"][str(workers)] = res
    out["in_process"] = in_process(art, users, iterations=300)
    _log(f"  {name} in-process: {out['in_process']}")
    one = out["workers"].get("1", {})
    ratios: dict[str, float] = {}
    if one:
        ratios["rps_c32_recommend_over_trivial"] = (
            one["recommend"]["c32"]["requests_per_s"] / one["trivial"]["c32"]["requests_per_s"]
        )
    two = out["workers"].get("2", {})
    if one and two:
        for label in ("recommend", "trivial"):
            ratios[f"two_workers_over_one_{label}"] = (
                two[label]["c32"]["requests_per_s"] / one[label]["c32"]["requests_per_s"]
            )
    out["ratios"] = ratios
    return out


def earlier_runs(old: dict[str, Any], kept: list[dict[str, Any]]) -> list[str]:
    """``"corpus: `command` at revision, time"`` of each corpus ``kept`` from result ``old``.

    A corpus ``old`` itself had kept from an earlier run is credited to that run (its
    line in ``old["earlier_runs"]``, the first one naming it), every other one to ``old``.
    """
    own: dict[str, str] = {}
    for line in old.get("earlier_runs", []):
        names, _, run = line.partition(": ")
        for name in names.split(", "):
            own.setdefault(name, run)
    this = f"`{old['command']}` at {old['git_revision']}, {old['finished_at']}"
    return [f"{c['corpus']}: {own.get(c['corpus'], this)}" for c in kept]


# --- report -------------------------------------------------------------------------------

GOALS = {
    "c32_ratio": 0.33,
    "c32_p99_ms": 15.0,
    "c1_p50_ms": 1.0,
    "c1_p99_ms": 3.0,
    "two_workers": 1.6,
}


def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def sizing(doc: dict[str, Any]) -> list[str]:
    """The operator's sizing note: requests/s per worker and per core at a stated load, from ``doc``."""
    rows = []
    for c in doc["corpora"]:
        one, two = c["workers"].get("1"), c["workers"].get("2")
        if not one:
            continue
        rec32, rec1 = one["recommend"]["c32"], one["recommend"]["c1"]
        text = (
            f"- {c['corpus']}: one worker served {rec32['requests_per_s']:.0f} req/s at 32 "
            f"concurrent requests with p99 {rec32['p99_ms']:.1f} ms (one at a time: p50 "
            f"{rec1['p50_ms']:.2f} ms)"
        )
        cpu = one.get("profile", {}).get("c32", {}).get("server_cpu_us_per_request")
        if cpu:
            text += (
                f"; it spent {cpu:.0f} µs of CPU per request (all its threads), about "
                f"{1e6 / cpu:.0f} req/s per fully used core"
            )
        if two:
            rec2 = two["recommend"]["c32"]
            text += (
                f"; two workers on the {doc['machine']['cores']} cores served "
                f"{rec2['requests_per_s']:.0f} req/s with p99 {rec2['p99_ms']:.1f} ms"
            )
        rows.append(text + ".")
    if not rows:
        return []
    return [
        "",
        "Sizing (`/v1/recommend`, k=20, stored users; this run's figures): a worker is one "
        "event loop, so it scales by workers and replicas, not threads.",
        "",
        *rows,
        "",
        "Replicas x workers >= peak req/s / the per-worker figure at the p99 you need "
        "(`serving_p99.png`: p99 against the load reached); Redis and clients on the same "
        "cores take their share (here they did).",
    ]


def markdown(doc: dict[str, Any]) -> str:
    g = GOALS
    lines = [
        "# Serving benchmark",
        "",
        f"`{doc['command']}` at {doc['git_revision']}, {doc['machine']['cores']} cores "
        f"({doc['machine']['cpu']}), {doc['finished_at']}. {doc['threads']}."
        + (f" Soft demotion: {demotion}." if (demotion := doc["settings"].get("demotion")) else ""),
        "",
        f"Goals: c=32 throughput >= {g['c32_ratio']} of the trivial endpoint's, p99 <= "
        f"{g['c32_p99_ms']:g} ms, no errors; c=1 p50 <= {g['c1_p50_ms']:g} ms, p99 <= "
        f"{g['c1_p99_ms']:g} ms; 2 workers >= {g['two_workers']}x one.",
        "",
        "| catalog | model | index | c=32 req/s (ours / trivial) | ratio | c=32 p99 ms | errors | "
        "c=1 p50 / p99 ms | 2 workers / 1 (ours; trivial) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["corpora"]:
        one, two, r = c["workers"].get("1"), c["workers"].get("2"), c["ratios"]
        idx = c["index"]
        index = f"{idx.get('type')} {idx.get('params', {})} recall {idx.get('recall_at_k_vs_exact', float('nan')):.3f}"
        source = str((c.get("data") or {}).get("source", "?"))
        model = (
            f"test-factory vectors, {'trainer-form mean' if c.get('encoder') == 'mean' else 'fixture'} tower"
            if source == "artifact_factory"
            else f"`{source}`, 1 epoch, encoder {c.get('encoder')}"
        )
        if one is None:
            lines.append(f"| {c['corpus']} | {model} | {index} | not run | | | | | |")
            continue
        rec32, tr32, rec1 = one["recommend"]["c32"], one["trivial"]["c32"], one["recommend"]["c1"]
        errors = rec32["non_2xx"] + (1 if rec32["socket_errors"] else 0)
        ratio = r["rps_c32_recommend_over_trivial"]
        scale = (
            f"{r['two_workers_over_one_recommend']:.2f}x ({_mark(r['two_workers_over_one_recommend'] >= g['two_workers'])}); "
            f"{r['two_workers_over_one_trivial']:.2f}x"
            if two
            else "not run"
        )
        lines.append(
            f"| {c['corpus']} | {model} | {index} | {rec32['requests_per_s']:.0f} / {tr32['requests_per_s']:.0f} | "
            f"{ratio:.2f} ({_mark(ratio >= g['c32_ratio'])}) | {rec32['p99_ms']:.1f} "
            f"({_mark(rec32['p99_ms'] <= g['c32_p99_ms'])}) | {rec32['non_2xx']} non-2xx, "
            f"socket: {rec32['socket_errors'] or 'none'} ({_mark(errors == 0)}) | "
            f"{rec1['p50_ms']:.2f} / {rec1['p99_ms']:.2f} "
            f"({_mark(rec1['p50_ms'] <= g['c1_p50_ms'] and rec1['p99_ms'] <= g['c1_p99_ms'])}) | {scale} |"
        )
    for run in doc.get("earlier_runs", []):
        lines.append(f"\nFrom an earlier run, merged with --append: {run}")
    for note in doc.get("not_run", []):
        lines.append(f"\nNot run: {note}")
    # Added to the JSON by hand when a run's conditions need saying (a disturbed machine).
    for note in doc.get("caveats", []):
        lines.append(f"\nCaveat: {note}")
    lines += sizing(doc)
    lines += ["", "<!-- headline:end -->", ""]
    lines += [
        "## wrk, per endpoint",
        "",
        "| catalog | workers | endpoint | c | req/s | p50 ms | p90 ms | p99 ms | non-2xx | socket errors |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in doc["corpora"]:
        for w, res in c["workers"].items():
            for label in ("trivial", "recommend"):
                for key, r in res.get(label, {}).items():
                    lines.append(
                        f"| {c['corpus']} | {w} | {label} | {key[1:]} | {r['requests_per_s']:.0f} | "
                        f"{r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} | "
                        f"{r['socket_errors'] or ''} |"
                    )
    profiled = [c for c in doc["corpora"] if "profile" in c["workers"].get("1", {})]
    if profiled:
        lines += [
            "",
            "## Where a request's CPU time goes (one worker, py-spy)",
            "",
            "Server CPU time (user + system, all threads) over the sampling window divided by the "
            "requests served in it, split by the share of py-spy samples in each stage (a "
            "sample's stage: the first rule of `bench.serving.STAGES` its innermost frames "
            "match). Samples of a thread waiting for work (the batch thread between batches, "
            "uvloop's idle executor thread: `bench.serving.IDLE_LEAVES`) are left out, since "
            "py-spy counts them as active here. The event loop row is uvloop's own C code; at "
            "c=1 it also holds the loop's wait for the next request, which py-spy cannot tell "
            "apart. Microseconds per request.",
            "",
        ]
        cols = [(c["corpus"], k) for c in profiled for k in ("c1", "c32")]
        lines.append(
            "| stage | " + " | ".join(f"{name} {k.replace('c', 'c=')}" for name, k in cols) + " |"
        )
        lines.append("|---" * (len(cols) + 1) + "|")
        by = {
            (c["corpus"], k): c["workers"]["1"]["profile"][k]
            for c in profiled
            for k in ("c1", "c32")
        }
        for stage in STAGES:
            lines.append(
                f"| {stage} | "
                + " | ".join(f"{by[col]['stages_us_per_request'][stage]:.0f}" for col in cols)
                + " |"
            )
        lines.append(
            "| **total** | "
            + " | ".join(f"**{by[col]['server_cpu_us_per_request']:.0f}**" for col in cols)
            + " |"
        )
        lines.append(
            "| (req/s while sampled) | "
            + " | ".join(f"{by[col]['load']['requests_per_s']:.0f}" for col in cols)
            + " |"
        )
        lines.append("")
        lines.append(
            "Profiles (py-spy raw collapsed stacks): "
            + ", ".join(f"`{by[col]['profile']}`" for col in cols)
        )
    lines += [
        "",
        "## In-process (no HTTP): store read + tower + FAISS + filtering, one request at a time",
        "",
        "| catalog | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for c in doc["corpora"]:
        ip = c["in_process"]
        lines.append(f"| {c['corpus']} | {ip['p50_ms']:.2f} | {ip['p99_ms']:.2f} |")
    if doc.get("figures"):
        lines += ["", "p99 against throughput (wrk concurrency sweep, one worker): "
                  + ", ".join(f"`{f}`" for f in doc["figures"])]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> bool:
    """p99 against requests/s for ours and the trivial endpoint, one panel per catalog."""
    swept = [c for c in doc["corpora"] if "sweep" in c["workers"].get("1", {})]
    if not swept:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(swept), figsize=(6 * len(swept), 4.2), squeeze=False)
    for ax, c in zip(axes[0], swept, strict=True):
        for label, style in (("trivial", "o--"), ("recommend", "s-")):
            pts = c["workers"]["1"]["sweep"][label]
            ax.plot(
                [p["requests_per_s"] for p in pts],
                [p["p99_ms"] for p in pts],
                style,
                label=f"{'/v1/recommend' if label == 'recommend' else 'trivial FastAPI'}",
            )
            for p in pts:
                ax.annotate(f"c={p['connections']}", (p["requests_per_s"], p["p99_ms"]), fontsize=7)
        ax.set_yscale("log")
        ax.set_xlabel("requests/s reached (wrk, closed loop: load offered by c connections)")
        ax.set_ylabel("p99 latency (ms)")
        ax.set_title(f"{c['corpus']}, 1 worker")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--items",
        default="100000,1000000",
        help="synthetic catalog sizes, comma-separated (default 100000,1000000)",
    )
    p.add_argument("--users", type=int, default=2000, help="synthetic users (training and stored)")
    p.add_argument(
        "--factory",
        action="store_true",
        help="made-up item vectors and a mean tower in the trainer's exported form (served in NumPy) instead of a model trained by twotower train",
    )
    p.add_argument(
        "--artifacts",
        default="",
        help="comma-separated artifact directories to serve instead of training catalogs "
        "(their manifests' data source and index are recorded); --items is then ignored",
    )
    p.add_argument("--workers", default="1,2", help="uvicorn worker counts (default 1,2)")
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run")
    p.add_argument("--sweep-duration", type=float, default=5, help="seconds per sweep point")
    p.add_argument("--no-sweep", dest="sweep", action="store_false")
    p.add_argument("--out", default="serving", help="result name under bench/results/")
    p.add_argument(
        "--append",
        action="store_true",
        help="keep the catalogs of the existing result that this run does not measure "
        "(their command and revision are listed in the result)",
    )
    p.add_argument(
        "--render-only",
        action="store_true",
        help="re-split the saved profiles into stages and rewrite the markdown and the plot "
        "from the existing result (no measurement)",
    )
    args = p.parse_args()
    if args.render_only:
        path = RESULTS / f"{args.out}.json"
        doc = json.loads(path.read_text())
        restage(doc)
        path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
        plot(doc, RESULTS / f"{args.out}_p99.png")
        (RESULTS / f"{args.out}.md").write_text(markdown(doc))
        print(markdown(doc))
        return 0
    args.workers = [int(w) for w in args.workers.split(",") if w]
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2
    if py_spy() is None:
        _log("py-spy not found: no stage table (pip install py-spy)")
    sizes = [int(x) for x in args.items.split(",") if x]
    if args.artifacts:
        from common import artifacts

        sizes = [
            int(artifacts.read_manifest(Path(a))["num_items"]) for a in args.artifacts.split(",")
        ]
    not_run = [
        f"the {n:,}-item catalog (not in --items of this run)"
        for n in (100_000, 1_000_000)
        if n not in sizes
    ]
    if 2 not in args.workers:
        not_run.append("2 workers (not in --workers of this run)")
    results = []
    with tempfile.TemporaryDirectory(prefix="twotower-bench-") as d:
        tmp = Path(d)
        if args.artifacts:
            from common import artifacts

            for given in args.artifacts.split(","):
                art = Path(given).resolve()
                items = int(artifacts.read_manifest(art)["num_items"])
                load_users(args.users, _catalog(art), 0)
                results.append(bench_catalog(f"synthetic-{items}", art, args.users, args, tmp))
        for items in [] if args.artifacts else sizes:
            art = make_catalog(items, args.users, args.factory, tmp)
            load_users(args.users, _catalog(art), 0)
            results.append(bench_catalog(f"synthetic-{items}", art, args.users, args, tmp))
            shutil.rmtree(art, ignore_errors=True)
    earlier: list[str] = []
    old_path = RESULTS / f"{args.out}.json"
    if args.append and old_path.is_file():
        old = json.loads(old_path.read_text())
        measured = {c["corpus"] for c in results}
        kept = [c for c in old.get("corpora", []) if c["corpus"] not in measured]
        if kept:
            earlier = earlier_runs(old, kept)
            results = kept + results
            sizes = sorted({*sizes, *(int(c["num_items"]) for c in kept)})
            not_run = [
                n for n in not_run if not any(f"{int(c['num_items']):,}-item" in n for c in kept)
            ]
    figures = {
        "earlier_runs": earlier,
        "threads": "twotower serve with TF intra/inter-op 1 and FAISS threads = cores / workers "
        f"({thread_env(1)['TWOTOWER_SERVE__FAISS_THREADS']} with 1 worker, "
        f"{thread_env(2)['TWOTOWER_SERVE__FAISS_THREADS']} with 2; a search uses 1 per 8 "
        "queries of its batch); uvloop + httptools, no access log, for ours and the trivial "
        "app alike; "
        "wrk -t1 (-t2 at c=64); the 2 cores are shared by the server, wrk and Redis",
        "settings": {"batch_max_size": 64, "batch_max_wait_ms": 1.0, "k": K, "demotion": DEMOTION},
        "catalogs": "synthetic:users=N,items=M trained 1 epoch by twotower train (index as the "
        "trainer picks)"
        if not args.factory
        else FACTORY_CATALOG,
        "goals": GOALS,
        "not_run": not_run,
        "corpora": results,
    }
    png = RESULTS / f"{args.out}_p99.png"
    # written first so that the JSON names only a figure that exists
    doc_stub = {"corpora": results}
    if plot(doc_stub, png):
        figures["figures"] = [png.name]
    path = write_result(
        args.out,
        figures,
        packages=(
            "fastapi",
            "uvicorn",
            "faiss-gpu",
            "faiss-cpu",
            "tensorflow",
            "redis",
            "pydantic-core",
        ),
    )
    doc = json.loads(path.read_text())
    (RESULTS / f"{args.out}.md").write_text(markdown(doc))
    print(markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
