"""``twotower pipeline``: the scheduled training job with a quality gate.

One run:
  1. takes an exclusive lock on ``ART/.pipeline.lock`` (``flock``: released by the
     OS if the process dies, so a killed run never blocks the next one);
  2. moves new events from the store's durable log into the Parquet event archive
     ``ART/events/`` (cursor-based, each event exactly once);
  3. builds the training window (all archived events, or the last
     ``pipeline.window_days``) and its time-based holdout (per-user leave-last-out);
  4. warm-starts from the published version (vocabularies grow, old ids keep rows),
     trains, exports a *candidate* version without publishing it;
  5. evaluates the candidate and the published version on the same holdout with
     the same code (``trainer.run.evaluate_version``) and applies the gate;
  6. publishes (LATEST) only if the gate passes or ``--force`` is given, writes a
     report (JSON + HTML with the metric history) and prunes old versions.

A run killed at any point leaves LATEST on a complete version: candidates are
written under a staging name and renamed, LATEST is replaced atomically, and the
event archive is append-only with its cursor committed after the files.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trainer.config import TrainerConfig
from twotower import artifacts
from twotower.config import load_config

log = logging.getLogger(__name__)

LOCK_FILE = ".pipeline.lock"
EVENTS_DIR = "events"
REPORTS_DIR = "reports"


class GateRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    direction: Literal["higher", "lower"]
    """``higher``: larger is better (recall); ``lower``: smaller is better (dislike rate)."""
    tolerance: float = Field(0.0, ge=0.0)
    """Allowed regression in the metric's own units (absolute)."""


class PipelineSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    window_days: float | None = Field(None, gt=0)
    """Train on events of the last N days (by event time); None = all archived events."""
    min_new_events: int = Field(1, ge=0)
    """Skip the run (exit 0) when fewer new events than this arrived since the published version."""
    gate: dict[str, GateRule] = {
        "recall@20": GateRule(direction="higher", tolerance=0.01),
        "dislike_rate@20": GateRule(direction="lower", tolerance=0.01),
    }
    keep_versions: int = Field(5, ge=1)


class PipelineConfig(TrainerConfig):
    """The trainer config plus the ``pipeline`` section."""

    pipeline: PipelineSection = PipelineSection()

    def trainer(self) -> TrainerConfig:
        data = self.model_dump()
        data.pop("pipeline")
        return TrainerConfig.model_validate(data)


class PipelineLocked(RuntimeError):
    """Another pipeline run holds the lock."""


@contextlib.contextmanager
def run_lock(art: Path) -> Iterator[None]:
    art.mkdir(parents=True, exist_ok=True)
    fd = os.open(art / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise PipelineLocked(
                f"another pipeline run holds {art / LOCK_FILE}; not starting a second one"
            ) from exc
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


def apply_gate(
    candidate: dict[str, Any], published: dict[str, Any] | None, rules: dict[str, GateRule]
) -> tuple[bool, list[dict[str, Any]]]:
    """Compare metric by metric; returns (passed, per-rule report rows)."""
    rows = []
    passed = True
    for name, rule in rules.items():
        new = float(candidate[name])
        if published is None:
            rows.append(
                {
                    "metric": name,
                    "candidate": new,
                    "published": None,
                    "ok": True,
                    "why": "nothing published",
                }
            )
            continue
        old = float(published[name])
        delta = new - old
        regress = -delta if rule.direction == "higher" else delta
        ok = regress <= rule.tolerance + 1e-12
        passed &= ok
        rows.append(
            {
                "metric": name,
                "direction": rule.direction,
                "candidate": new,
                "published": old,
                "delta": delta,
                "tolerance": rule.tolerance,
                "ok": ok,
            }
        )
    return passed, rows


def _metric_history(art: Path) -> list[dict[str, Any]]:
    hist = []
    for v in artifacts.list_versions(art):
        m = artifacts.read_manifest(art, v)
        hist.append(
            {"version": v, "created_at": m.get("created_at"), "metrics": m.get("metrics", {})}
        )
    return hist


def write_report(art: Path, report: dict[str, Any]) -> Path:
    """JSON report + an HTML page with the metric history across versions (PNG inline)."""
    out = art / REPORTS_DIR
    out.mkdir(parents=True, exist_ok=True)
    stem = report["run_id"]
    json_path = out / f"{stem}.json"
    artifacts.atomic_write_text(json_path, json.dumps(report, indent=2, default=str))
    history = report.get("history", [])
    img = ""
    try:
        import base64
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        xs = list(range(len(history)))
        for name in ("recall@20", "ndcg@20", "dislike_rate@20"):
            ys = [h["metrics"].get(name) for h in history]
            if any(y is not None for y in ys):
                ax.plot(xs, ys, marker="o", label=name)
        ax.set_xticks(xs, [h["version"][:15] for h in history], rotation=30, fontsize=7)
        ax.set_title("metrics by version (test holdout at training time)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        img = f'<img alt="metric history" src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()}">'
    except Exception as exc:  # a missing plot must not fail the run
        log.warning("could not draw the metric history: %s", exc)
    rows = "".join(
        f"<tr><td>{r['metric']}</td><td>{r.get('published')}</td><td>{r['candidate']}</td>"
        f"<td>{'ok' if r['ok'] else 'REGRESSION'}</td></tr>"
        for r in report.get("gate", [])
    )
    html = (
        f"<!doctype html><meta charset=utf-8><title>twotower pipeline {stem}</title>"
        f"<h1>pipeline run {stem}: {report['outcome']}</h1><p>{report.get('reason', '')}</p>"
        f"<table border=1><tr><th>metric</th><th>published</th><th>candidate</th><th>gate</th></tr>{rows}</table>"
        f"{img}<pre>{json.dumps({k: report[k] for k in ('events', 'candidate', 'published') if k in report}, indent=2, default=str)}</pre>"
    )
    artifacts.atomic_write_text(out / f"{stem}.html", html)
    return json_path


def run_once(
    store_url: str,
    art: str | Path,
    config: PipelineConfig,
    *,
    force: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """One pipeline run; returns the report (``outcome``: published | refused | skipped)."""
    from feature_store.log import compact, read_compacted
    from trainer.data.sources import dataset_from_events
    from trainer.run import evaluate_version, train
    from trainer.warmstart import WarmStartError

    art = Path(art)
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    report: dict[str, Any] = {"run_id": run_id, "store": _redact(store_url), "forced": force}
    with run_lock(art):
        compacted = compact(store_url, art / EVENTS_DIR, consumer="pipeline")
        events = read_compacted(art / EVENTS_DIR)
        pc = config.pipeline
        if pc.window_days is not None and events:
            horizon = max(e.ts for e in events) - pc.window_days * 86400
            events = [e for e in events if e.ts >= horizon]
        published = artifacts.latest_version(art)
        published_manifest = artifacts.read_manifest(art, published) if published else None
        trained_through = (published_manifest or {}).get("pipeline", {}).get("archived_events", 0)
        archived = compacted.total
        report["events"] = {
            "new": compacted.new_events,
            "archived": archived,
            "window": len(events),
        }
        if not events:
            report.update(outcome="skipped", reason="the event log is empty")
            return report
        if published and archived - trained_through < pc.min_new_events and not force:
            report.update(
                outcome="skipped",
                reason=f"{archived - trained_through} new events since {published} (< {pc.min_new_events})",
            )
            return report
        ds = dataset_from_events(events, source=f"events:{_redact(store_url)}")
        tcfg = config.trainer()
        warm = published if published and _can_warm_start(published_manifest, tcfg) else None
        if warm and tcfg.model.use_item_features:
            old_features = set((published_manifest or {}).get("item_feature_sizes", {}))
            if old_features != set(ds.item_feature_sizes):
                log.warning(
                    "not warm-starting from %s: item features differ (%s vs %s)",
                    warm,
                    old_features,
                    set(ds.item_feature_sizes),
                )
                warm = None
        try:
            outcome = train(
                f"events:{store_url}",
                art,
                tcfg,
                ds=ds,
                warm_version=warm,
                publish=False,
                progress=progress,
            )
        except WarmStartError as exc:
            log.warning("warm start from %s failed (%s); training from scratch", warm, exc)
            outcome = train(
                f"events:{store_url}", art, tcfg, ds=ds, publish=False, progress=progress
            )
        report["warm_start"] = outcome.training.get("warm_start")
        candidate = evaluate_version(art, outcome.version, ds)
        report["candidate"] = {"version": outcome.version, "metrics": candidate["metrics"]}
        old = evaluate_version(art, published, ds) if published else None
        if old:
            report["published"] = {"version": published, "metrics": old["metrics"]}
        passed, rows = apply_gate(candidate["metrics"], old["metrics"] if old else None, pc.gate)
        report["gate"] = rows
        _annotate(
            art,
            outcome.version,
            {"archived_events": archived, "run_id": run_id, "gate_passed": passed},
        )
        if passed or force:
            if not passed:
                log.warning(
                    "quality gate FAILED but --force given: publishing %s anyway", outcome.version
                )
            artifacts.publish(art, outcome.version)
            report.update(outcome="published", version=outcome.version)
            report["reason"] = "gate passed" if passed else "gate failed, published with --force"
        else:
            bad = [r["metric"] for r in rows if not r["ok"]]
            report.update(
                outcome="refused", version=outcome.version, reason=f"regression on {', '.join(bad)}"
            )
        artifacts.prune_versions(art, pc.keep_versions)
        report["history"] = _metric_history(art)
        report["report_path"] = str(write_report(art, report))
    return report


def _can_warm_start(manifest: dict[str, Any] | None, config: TrainerConfig) -> bool:
    """Same architecture as the published version? Otherwise the run cold-starts (logged)."""
    if not manifest:
        return False
    try:
        old = TrainerConfig.model_validate(manifest["config"])
    except Exception as exc:  # a config from another release: cold start, not a failure
        log.warning(
            "not warm-starting from %s: its config does not load (%s)", manifest.get("version"), exc
        )
        return False
    keys = (
        "embedding_dim",
        "encoder",
        "hidden_units",
        "attention_heads",
        "attention_layers",
        "use_item_features",
    )
    changed = [k for k in keys if getattr(old.model, k) != getattr(config.model, k)]
    if old.loss.logq != config.loss.logq:
        changed.append("loss.logq")
    if (old.frequency.buckets, old.frequency.hashes) != (
        config.frequency.buckets,
        config.frequency.hashes,
    ):
        changed.append("frequency.buckets/hashes")
    if changed:
        log.warning(
            "not warm-starting from %s: %s changed; training from scratch",
            manifest.get("version"),
            changed,
        )
        return False
    return True


def _annotate(art: Path, version: str, info: dict[str, Any]) -> None:
    """Record pipeline bookkeeping in the candidate's manifest (before it is published)."""
    vdir = artifacts.version_dir(art, version)
    manifest = artifacts.read_manifest(art, version)
    manifest["pipeline"] = info
    artifacts.atomic_write_text(
        vdir / artifacts.MANIFEST, json.dumps(manifest, indent=2, sort_keys=True, default=str)
    )


def _redact(url: str) -> str:
    """Hide a password in a store URL before it goes into reports."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        return f"{scheme}://***@{host}"
    return url


def next_run_delay(every: str, now: float | None = None) -> float:
    """Seconds until the next run: ``every`` is seconds (``3600``) or a cron expression."""
    now = time.time() if now is None else now
    try:
        seconds = float(every)
    except ValueError:
        from croniter import croniter

        if not croniter.is_valid(every):
            from twotower.config import ConfigError

            raise ConfigError(
                f"--every {every!r}: not a number of seconds nor a valid cron expression"
            ) from None
        return max(0.0, croniter(every, now).get_next(float) - now)
    if seconds <= 0:
        from twotower.config import ConfigError

        raise ConfigError(f"--every {every!r}: the interval must be positive")
    return seconds


def pipeline_command(args: argparse.Namespace) -> int:
    sets = list(args.overrides or [])
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    config = load_config(PipelineConfig, file=args.config, overrides=sets)
    if args.every:
        next_run_delay(args.every)  # validate before the first run
    while True:
        code = _one(args, config)
        if not args.every:
            return code
        delay = next_run_delay(args.every)
        log.info("next pipeline run in %.0f s", delay)
        time.sleep(delay)


def _one(args: argparse.Namespace, config: PipelineConfig) -> int:
    try:
        report = run_once(args.store, args.artifacts, config, force=args.force)
    except PipelineLocked as exc:
        print(f"twotower pipeline: {exc}", file=sys.stderr)
        return 1
    json.dump(
        {k: v for k, v in report.items() if k != "history"}, sys.stdout, indent=2, default=str
    )
    print()
    if report["outcome"] == "refused":
        print(
            f"twotower pipeline: quality gate refused {report['version']}: {report['reason']}",
            file=sys.stderr,
        )
        for row in report["gate"]:
            print(
                f"  {row['metric']:>18}: published {row['published']:.4f} -> candidate {row['candidate']:.4f} "
                f"({'ok' if row['ok'] else 'REGRESSION'}, tolerance {row['tolerance']})",
                file=sys.stderr,
            )
        return 1
    return 0
