"""bench.serving's parsing of wrk output and its split of profile samples into stages."""

from __future__ import annotations

import math

from bench.common import REPO
from bench.serving import (
    STAGES,
    earlier_runs,
    encode_lines,
    parse_wrk,
    sizing,
    split_stages,
    stage_of,
)

WRK = """Running 10s test @ http://127.0.0.1:8000
  1 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.10ms    1.20ms  30.00ms   90.00%
  Latency Distribution
     50%    3.90ms
     75%    4.50ms
     90%    5.10ms
     99%  812.00us
  48000 requests in 10.00s, 20.00MB read
  Socket errors: connect 0, read 0, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:   4800.50
Transfer/sec:      2.00MB
"""


def test_parse_wrk_reads_rates_percentiles_in_their_units_and_errors() -> None:
    r = parse_wrk(WRK, 32)
    assert r["requests_per_s"] == 4800.50 and r["requests"] == 48000
    assert r["p50_ms"] == 3.90 and r["p90_ms"] == 5.10
    assert math.isclose(r["p99_ms"], 0.812)
    assert r["non_2xx"] == 5 and r["socket_errors"] == "connect 0, read 0, write 0, timeout 3"


def test_parse_wrk_without_errors() -> None:
    clean = "\n".join(
        line for line in WRK.splitlines() if "errors" not in line and "Non-2xx" not in line
    )
    r = parse_wrk(clean, 1)
    assert r["non_2xx"] == 0 and r["socket_errors"] is None


RUNNER = "_run_module_as_main (<frozen runpy>:198);run (uvicorn/main.py:600);Runner.run (asyncio/runners.py:118)"
HANDLER = (
    "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:401);"
    "APIRoute.handle (fastapi/routing.py:300);recommend (serving/routes.py:10)"
)


def test_stage_of_takes_the_innermost_matching_frame() -> None:
    worker = "Thread._bootstrap (threading.py:1002);run_isolated (serving/batcher.py:50);run_batch (serving/retrieval.py:180)"
    assert (
        stage_of([*worker.split(";"), "LoadedModel.search (serving/model.py:250)"], set())
        == "FAISS"
    )
    assert (
        stage_of([*worker.split(";"), "LoadedModel.embed (serving/model.py:240)"], set()) == "tower"
    )
    assert stage_of(worker.split(";"), set()) == "filtering + merge"
    assert stage_of(RUNNER.split(";"), set()) == "event loop"
    read = (
        f"{HANDLER};read_user (serving/service.py:200);get_users (feature_store/redis/store.py:320)"
    )
    assert stage_of(read.split(";"), set()) == "store read"
    assert stage_of(HANDLER.split(";"), set()) == "HTTP stack (uvicorn, Starlette, FastAPI)"
    # A C encoder's time shows on the line that calls it.
    assert stage_of(HANDLER.split(";"), {("routes", 10)}) == "serialisation"
    assert (
        stage_of(HANDLER.split(";"), {("direct", 10)}) == "HTTP stack (uvicorn, Starlette, FastAPI)"
    )
    direct = (
        "RequestResponseCycle.run_asgi (uvicorn/protocols/http/httptools_impl.py:401);"
        "DirectRecommend.__call__ (serving/direct.py:120)"
    )
    assert stage_of(direct.split(";"), set()) == "HTTP stack (uvicorn, Starlette, FastAPI)"
    assert stage_of(direct.split(";"), {("direct", 120)}) == "serialisation"


def test_encode_lines_are_the_encoder_calls_of_both_answer_paths() -> None:
    lines = encode_lines()
    assert {module for module, _ in lines} == {"routes", "direct"}
    for module, n in lines:
        source = (REPO / "serving" / f"{module}.py").read_text().splitlines()
        assert "to_json(" in source[n - 1]


def test_split_stages_counts_samples() -> None:
    raw = f"{RUNNER} 30\n{HANDLER} 10\n\n"
    stages, total = split_stages(raw)
    assert total == 40
    assert stages["event loop"] == 30
    assert sum(stages.values()) == total and set(stages) <= set(STAGES)


def test_split_stages_leaves_out_threads_waiting_for_work() -> None:
    waiting = "Thread._bootstrap (threading.py:1002);_worker (concurrent/futures/thread.py:81)"
    working = f"{waiting.rsplit(';', 1)[0]};_worker (concurrent/futures/thread.py:83);run_isolated (serving/batcher.py:50)"
    stages, total = split_stages(f"{RUNNER} 30\n{waiting} 50\n{working} 20\n")
    assert total == 50
    assert stages == {"event loop": 30, "batcher + thread hand-off": 20}


def _load(rps: float, p50: float, p99: float) -> dict:
    return {"requests_per_s": rps, "p50_ms": p50, "p99_ms": p99}


def test_the_sizing_note_gives_requests_per_worker_and_per_core() -> None:
    one = {
        "recommend": {"c32": _load(1400, 20.0, 32.5), "c1": _load(800, 1.1, 1.9)},
        "profile": {"c32": {"server_cpu_us_per_request": 800.0}},
    }
    two = {"recommend": {"c32": _load(2500, 11.0, 20.25)}}
    doc = {
        "machine": {"cores": 2},
        "corpora": [{"corpus": "synthetic-100000", "workers": {"1": one, "2": two}}],
    }
    text = "\n".join(sizing(doc))
    assert "one worker served 1400 req/s at 32 concurrent requests with p99 32.5 ms" in text
    assert "800 µs of CPU per request" in text and "about 1250 req/s per fully used core" in text
    assert "two workers on the 2 cores served 2500 req/s with p99 20.2 ms" in text
    # Nothing measured with one worker: no note.
    assert sizing({"machine": {"cores": 2}, "corpora": [{"corpus": "x", "workers": {}}]}) == []


def test_appended_results_credit_each_kept_corpus_to_the_run_that_measured_it() -> None:
    """``--append`` twice: the corpus kept twice keeps its own run's command, and a corpus
    measured by the previous result is credited to that result."""
    first = {"command": "python -m bench.serving --items 100000", "git_revision": "aaa",
             "finished_at": "t1", "corpora": [{"corpus": "synthetic-100000"}]}  # fmt: skip
    kept = [{"corpus": "synthetic-100000"}]
    second = {
        "command": "python -m bench.serving --items 1000000 --append",
        "git_revision": "bbb",
        "finished_at": "t2",
        "earlier_runs": earlier_runs(first, kept),
        "corpora": [*kept, {"corpus": "synthetic-1000000"}],
    }
    assert second["earlier_runs"] == [
        "synthetic-100000: `python -m bench.serving --items 100000` at aaa, t1"
    ]
    # A third run re-measures 1M: 100k still comes from the first run, not the second.
    assert earlier_runs(second, kept) == second["earlier_runs"]
    # A third run re-measures 100k: 1M is the second run's.
    assert earlier_runs(second, [{"corpus": "synthetic-1000000"}]) == [
        "synthetic-1000000: `python -m bench.serving --items 1000000 --append` at bbb, t2"
    ]
