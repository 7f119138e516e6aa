"""Before and after: ``/v1/recommend`` of two revisions, alternated in one run (not a test).

The machines are shared and noisy: the same code measured twenty minutes apart
can differ by a quarter, so a change to the serving path is judged by running
the old and the new code back to back, several times, on the same catalog,
the same stored users and the same settings, and comparing medians.

The base revision's tree is exported (``git archive``) into a temp directory;
the other side is this checkout. One synthetic catalog is trained once (by this
checkout, as ``bench.serving`` does) and its users stored in the bench's Redis
DB. Each round starts one ``twotower serve`` per side (one worker, the threads
``bench.serving`` uses) and drives it with ``wrk``: concurrency 32 (throughput,
p99, and the server's CPU time per request: user + system of all its threads)
and concurrency 1 (latency).

    python -m bench.serving_compare --base 5d6345a                # 100k items, 3 rounds
    python -m bench.serving_compare --base HEAD~3 --rounds 5 --duration 10
    python -m bench.serving_compare --base HEAD --base-set export.ivf_codec=flat
    python -m bench.serving_compare --base HEAD~2 --factory --items 1000000

``--factory`` serves made-up item vectors and a mean tower in the trainer's
exported form, as ``bench.serving --factory`` does (a 1M-item catalog in a
minute, where training one takes far longer).

``--base-set KEY=VALUE`` (repeatable) gives the base side a catalog of its own,
trained by this checkout with those trainer settings (same data, same seed):
a change to what the trainer exports is compared the same way.

Results: ``bench/results/serving_compare.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import REPO, write_report
from bench.serving import (
    FACTORY_CATALOG,
    REDIS_URL,
    _catalog,
    _cpu_seconds,
    _log,
    load_users,
    make_catalog,
    run_wrk,
    thread_env,
)

#: What each round measures, per side.
FIGURES = ("rps_c32", "p99_ms_c32", "cpu_us_per_request_c32", "p50_ms_c1", "p99_ms_c1")
#: Lower is better for these.
LOWER_IS_BETTER = {"p99_ms_c32", "cpu_us_per_request_c32", "p50_ms_c1", "p99_ms_c1"}


def export_tree(revision: str, into: Path) -> str:
    """Write ``revision``'s tracked files into ``into``; returns its full hash."""
    full = subprocess.run(
        ["git", "rev-parse", "--verify", f"{revision}^{{commit}}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    into.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", full], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return full


def measure(code: Path, art: Path, users: int, duration: float, tmp: Path) -> dict[str, float]:
    """One side of one round: a fresh server from ``code``, warmed, then c=32 and c=1."""
    from tests.serving.server import running_server

    env = {**thread_env(1), "TWOTOWER_SERVE__RELOAD_POLL_S": "3600"}
    with running_server(art, REDIS_URL, workers=1, timeout_s=900, code=code, **env) as srv:
        run_wrk(srv.url, "/v1/recommend", users, 32, 3, tmp)  # warm-up
        cpu0 = _cpu_seconds(srv.proc.pid)
        c32 = run_wrk(srv.url, "/v1/recommend", users, 32, duration, tmp)
        cpu = _cpu_seconds(srv.proc.pid) - cpu0
        c1 = run_wrk(srv.url, "/v1/recommend", users, 1, duration / 2, tmp)
    if c32["non_2xx"] or c32["socket_errors"] or c1["non_2xx"]:
        raise RuntimeError(f"{code}: errors under load: c=32 {c32}, c=1 {c1}")
    requests = c32["requests"] or c32["requests_per_s"] * duration
    return {
        "rps_c32": c32["requests_per_s"],
        "p99_ms_c32": c32["p99_ms"],
        "cpu_us_per_request_c32": cpu / requests * 1e6,
        "p50_ms_c1": c1["p50_ms"],
        "p99_ms_c1": c1["p99_ms"],
    }


def summarise(rounds: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per figure: each side's median over the rounds, and the median of the rounds'
    head / base ratios (the two sides of a round ran a minute apart, so a drift of the
    machine over the run cancels in a round's ratio, not in the medians')."""
    out: dict[str, dict[str, float]] = {}
    for name in FIGURES:
        ratios = [r["head"][name] / r["base"][name] for r in rounds if r["base"][name]]
        out[name] = {
            "base": statistics.median(r["base"][name] for r in rounds),
            "head": statistics.median(r["head"][name] for r in rounds),
            "head_over_base": statistics.median(ratios) if ratios else float("nan"),
        }
    return out


def markdown(doc: dict[str, Any]) -> str:
    s = doc["summary"]
    labels = {
        "rps_c32": "c=32 req/s",
        "p99_ms_c32": "c=32 p99 ms",
        "cpu_us_per_request_c32": "c=32 server CPU µs / request",
        "p50_ms_c1": "c=1 p50 ms",
        "p99_ms_c1": "c=1 p99 ms",
    }
    lines = [
        "# Serving, before and after",
        "",
        f"`{doc['command']}`: `/v1/recommend` of {doc['base_revision'][:7]} (base) and "
        f"{doc['git_revision'][:7]} (head), one worker each, alternated {len(doc['rounds'])} times "
        f"in one run on {doc['catalog']}; wrk {doc['duration_s']:g} s at c=32, "
        f"{doc['duration_s'] / 2:g} s at c=1. Each side's median over the rounds, and the "
        "median of the rounds' head / base ratios."
        + (
            f" The base side serves its own catalog, trained with {', '.join(doc['base_settings'])}."
            if doc.get("base_settings")
            else ""
        ),
        "",
        "| figure | base | head | head / base (median of the rounds') |",
        "|---|---|---|---|",
    ]
    for name in FIGURES:
        r = s[name]
        better = "lower is better" if name in LOWER_IS_BETTER else "higher is better"
        lines.append(
            f"| {labels[name]} ({better}) | {r['base']:.2f} | {r['head']:.2f} | "
            f"{r['head_over_base']:.2f} |"
        )
    lines += ["", "<!-- headline:end -->", "", "## Every round", ""]
    lines.append("| round | side | " + " | ".join(labels[n] for n in FIGURES) + " |")
    lines.append("|---" * (len(FIGURES) + 2) + "|")
    for i, r in enumerate(doc["rounds"], 1):
        for side in ("base", "head"):
            lines.append(
                f"| {i} | {side} | " + " | ".join(f"{r[side][n]:.2f}" for n in FIGURES) + " |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base", required=True, help="the revision to compare this checkout with")
    p.add_argument("--items", type=int, default=100_000, help="synthetic catalog size")
    p.add_argument("--users", type=int, default=2000, help="synthetic users (trained and stored)")
    p.add_argument("--rounds", type=int, default=3, help="base/head pairs, alternated")
    p.add_argument("--duration", type=float, default=8, help="seconds of wrk at c=32 (c=1: half)")
    p.add_argument("--out", default="serving_compare", help="bench/results/<out>.json and .md")
    p.add_argument(
        "--base-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="trainer setting of the base side's own catalog (repeatable)",
    )
    p.add_argument(
        "--factory",
        action="store_true",
        help="made-up item vectors and a mean tower in the trainer's exported form (as "
        "bench.serving --factory) instead of a catalog trained by twotower train",
    )
    args = p.parse_args()
    if args.factory and args.base_set:
        p.error("--base-set trains the base side's catalog: it does not go with --factory")
    rounds: list[dict[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="twotower-compare-") as d:
        tmp = Path(d)
        base_rev = export_tree(args.base, tmp / "base")
        art = make_catalog(args.items, args.users, args.factory, tmp)
        base_art = art
        if args.base_set:
            base_art = make_catalog(
                args.items, args.users, False, tmp / "base-catalog", args.base_set
            )
            if _catalog(base_art) != _catalog(art):
                raise RuntimeError("--base-set changed the catalog's items: the users would differ")
        load_users(args.users, _catalog(art), 0)
        for i in range(args.rounds):
            # Alternate which side goes first: a drift of the machine favours neither.
            order = [("base", tmp / "base", base_art), ("head", REPO, art)]
            if i % 2:
                order.reverse()
            this: dict[str, dict[str, float]] = {}
            for side, code, side_art in order:
                this[side] = measure(code, side_art, args.users, args.duration, tmp)
                _log(f"round {i + 1} {side}: {this[side]}")
            rounds.append(this)
    figures = {
        "base_revision": base_rev,
        "catalog": f"{FACTORY_CATALOG}, {args.items} items"
        if args.factory
        else f"synthetic:users={args.users},items={args.items}, 1 epoch",
        "base_settings": args.base_set,
        "duration_s": args.duration,
        "rounds": rounds,
        "summary": summarise(rounds),
    }
    packages = ("faiss-gpu", "faiss-cpu", "fastapi", "uvicorn")
    print(write_report(args.out, figures, markdown, packages=packages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
