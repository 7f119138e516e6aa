"""The soak's verdict (figures and checks), its markdown, and the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.soak.clients import Tally
from bench.soak.timeline import Run, soak

#: RSS growth from warm-up to the end that the run accepts (a reload holds two models briefly).
MEMORY_MARGIN = 0.5


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


def main(argv: list[str] | None = None) -> int:
    from bench.common import RESULTS, git_revision, machine_facts

    p = argparse.ArgumentParser(
        prog="python -m bench.soak",
        description=(sys.modules["bench.soak"].__doc__ or "").split("\n\n")[0],
    )
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
