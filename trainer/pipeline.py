"""``twotower pipeline``: the scheduled training job with a quality gate.

One run:
  1. takes an exclusive lock on ``ART/.pipeline.lock`` (``flock``: released by the
     OS if the process dies, so a killed run never blocks the next one);
  2. moves new events from the store's durable log into the Parquet event archive
     ``ART/events/`` (cursor-based, each event exactly once), or reads a frozen
     snapshot (``--snapshot``, see :mod:`trainer.snapshot`);
  3. skips (exit 0) when fewer than ``pipeline.min_new_events`` events arrived since
     the last run that reached the gate, whatever that run's outcome;
  4. builds the training window (all archived events, or the last
     ``pipeline.window_days``), warm-starts from the published version
     (vocabularies grow, old ids keep rows), trains into a checkpoint directory
     keyed by the snapshot it trains on, and exports a *candidate* version
     without publishing it;
  5. scores candidate and published version on one shared holdout (same users,
     same catalog: :mod:`trainer.gate`) and applies the gate;
  6. publishes only if the gate passes (or ``--force``), as a compare-and-swap
     against the version it was gated against; otherwise refuses with a reason;
  7. applies retention (one place: ``pipeline.keep_versions`` published-or-manual
     versions, ``pipeline.keep_refused`` refused candidates apart from them, and
     never the published or the previously published version) and writes a report.

Every run writes a report (:mod:`trainer.reports`), also when it is skipped,
finds the lock taken or fails. A run killed at any point leaves LATEST on a
complete version; a re-run on the same snapshot resumes from its checkpoint,
a run on a new snapshot removes the stale checkpoints and starts fresh.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import artifacts
from common.config import ConfigError, load_config
from common.files import atomic_write_text
from common.urls import redact_url
from trainer import reports
from trainer.config import TrainerConfig
from trainer.gate import GateRule, apply_gate, check_gate_names
from trainer.schedule import next_run_delay, run_forever

log = logging.getLogger(__name__)

LOCK_FILE = ".pipeline.lock"
EVENTS_DIR = "events"
STATE_FILE = "pipeline_state.json"
CHECKPOINTS_DIR = ".pipeline-checkpoints"

__all__ = ["GateRule", "PipelineConfig", "PipelineLocked", "apply_gate", "next_run_delay"]


class PipelineSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    window_days: float | None = Field(None, gt=0)
    """Train on events of the last N days (by event time); None = all archived events."""
    min_new_events: int = Field(1, ge=0)
    """Skip the run (exit 0) when fewer new events arrived since the last gated run."""
    gate: dict[str, GateRule] = {
        "recall@20": GateRule(direction="higher", tolerance=0.01),
        "like_dislike_auc": GateRule(direction="higher", tolerance=0.02),
    }
    """Metric name -> rule; names are checked against the scalar metrics when loading.
    By default recall@20 may not drop and like_dislike_auc (likes scored above
    dislikes, on answers neither version trained on) may not drop, by more than
    the tolerances. Never an absolute dislike rate: a model that recommends nothing
    relevant recommends no dislikes either. ``dislike_share@20`` (lower) can be
    added; its figure rests on the judged items the lists happen to show, often
    too few on small data (then it is left out, see ``gate_min_users``)."""
    gate_min_users: int = Field(50, ge=0)
    """A dislike metric (``like_dislike_auc``, ``dislike_share@20``, ``dislike_rate@20``)
    the published version scores on fewer users than this is left out of the gate,
    with the reason in the report, instead of compared."""
    keep_versions: int = Field(5, ge=1)
    """Published (or manually trained) versions kept; refused candidates do not count."""
    keep_refused: int = Field(1, ge=0)
    """Most recent refused candidates kept for inspection, apart from ``keep_versions``."""
    keep_reports: int = Field(200, ge=1)
    """Run reports (JSON + HTML) kept under ART/reports."""
    keep_history: int = Field(1000, ge=1)
    """Gated runs kept in ART/reports/history.jsonl."""
    keep_snapshots: int = Field(1, ge=0)
    """Frozen snapshots (``--freeze``) kept under ART/snapshots."""

    @field_validator("gate")
    @classmethod
    def _known_metrics(cls, rules: dict[str, GateRule]) -> dict[str, GateRule]:
        return check_gate_names(rules)


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
    try:
        fd = os.open(art / LOCK_FILE, os.O_CREAT | os.O_RDWR, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EROFS, errno.EACCES):
            raise artifacts.ArtifactError(
                f"{art}: cannot open {LOCK_FILE} for writing ({exc.strerror}); "
                "the pipeline needs the artifact directory read-write"
            ) from exc
        raise
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


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def run_once(
    store_url: str | None,
    art: str | Path,
    config: PipelineConfig,
    *,
    force: bool = False,
    progress: bool = True,
    snapshot: str | Path | None = None,
) -> dict[str, Any]:
    """One pipeline run; returns its report (``outcome``: published | refused | skipped).

    Writes ``ART/reports/<run_id>.json``/``.html`` whatever happens; re-raises
    :class:`PipelineLocked` (outcome ``locked``) and any failure (outcome ``failed``).
    """
    from trainer.pipeline_steps import gated_run

    art = Path(art)
    started = time.monotonic()
    report: dict[str, Any] = {
        "run_id": artifacts.new_version_id(),
        "started_at": _now(),
        "store": redact_url(store_url) if store_url else None,
        "snapshot": str(snapshot) if snapshot else None,
        "forced": force,
        "outcome": "failed",
    }
    try:
        with run_lock(art):
            gated_run(
                report, store_url, art, config, force=force, progress=progress, snapshot=snapshot
            )
        return report
    except PipelineLocked as exc:
        report.update(outcome="locked", reason=str(exc))
        raise
    except BaseException as exc:
        report.update(
            outcome="failed",
            reason=f"{type(exc).__name__}: {exc}",
            error="".join(traceback.format_exception(exc)[-3:]),
        )
        raise
    finally:
        report["finished_at"] = _now()
        report["seconds"] = round(time.monotonic() - started, 2)
        try:
            report["report_path"] = str(
                reports.write_report(art, report, config.pipeline.keep_reports)
            )
        except Exception as exc:  # the report is best effort: never mask the run's own outcome
            log.warning("could not write the report of run %s: %s", report["run_id"], exc)


# -- state, checkpoints, retention ----------------------------------------------------------


def read_state(art: Path) -> dict[str, Any]:
    """``ART/pipeline_state.json``: the last run that reached the gate (an unreadable file = none)."""
    path = art / STATE_FILE
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        log.warning("%s is unreadable (%s); treating it as empty", path, exc)
        return {}
    return state if isinstance(state, dict) else {}


def write_state(art: Path, state: dict[str, Any]) -> None:
    atomic_write_text(art / STATE_FILE, json.dumps(state, indent=2, default=str))


def checkpoint_dir(art: Path, key: dict[str, Any]) -> Path:
    """The checkpoint directory of a training run on one snapshot (same key = resumable)."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    return art / CHECKPOINTS_DIR / digest[:16]


def clear_checkpoints(art: Path, keep: Path | None = None) -> list[str]:
    """Remove the checkpoint dirs of earlier runs except ``keep`` (call under the run lock)."""
    root = art / CHECKPOINTS_DIR
    removed = []
    if root.is_dir():
        for p in root.iterdir():
            if keep is None or p.resolve() != keep.resolve():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p.name)
    if removed:
        log.info("removed stale checkpoints of earlier runs: %s", removed)
    return removed


def apply_retention(art: Path, keep: int, keep_refused: int, protect: set[str]) -> list[str]:
    """Prune versions: refused candidates apart, then the rest; returns the deleted ids.

    Kept whatever the counts: the published version, the previously published one
    (``PREVIOUS``) and ``protect`` (e.g. versions a snapshot warm-starts from).
    """
    kept = {artifacts.latest_version(art), artifacts.previous_version(art), *protect}
    refused: list[str] = []
    others: list[str] = []
    for v in artifacts.list_versions(art):
        try:
            outcome = artifacts.read_manifest(art, v).get("pipeline", {}).get("outcome")
        except (OSError, ValueError, artifacts.ArtifactError):
            outcome = None
        (refused if outcome == "refused" else others).append(v)
    doomed = refused[: max(len(refused) - keep_refused, 0)] + others[: max(len(others) - keep, 0)]
    doomed = [v for v in doomed if v not in kept]
    for v in doomed:
        artifacts.remove_version(art, v)
    artifacts.sweep_leftovers(art)
    if doomed:
        log.info("retention removed %s", doomed)
    return doomed


def annotate(art: Path, version: str, info: dict[str, Any]) -> None:
    """Record pipeline bookkeeping in a version's manifest (before it is published)."""
    manifest = artifacts.read_manifest(art, version)
    manifest["pipeline"] = info
    artifacts.write_manifest(artifacts.version_dir(art, version), manifest)


# -- the command ----------------------------------------------------------------------------


def is_chief_task(tf_config: str | None) -> bool:
    """Whether this process is the chief of a multi-worker job (``TF_CONFIG``; none = chief).

    Same rule as ``trainer.run.is_chief``: the ``chief`` task, or worker 0 when
    the cluster has no chief.
    """
    if not tf_config:
        return True
    try:
        spec = json.loads(tf_config)
        task = spec.get("task", {})
        kind, index = task.get("type"), int(task.get("index", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON with a task ({exc})") from exc
    if not kind or kind == "chief":
        return True
    return kind == "worker" and index == 0 and "chief" not in spec.get("cluster", {})


def pipeline_command(args: argparse.Namespace) -> int:
    sets = list(args.overrides or [])
    if args.epochs is not None:
        sets.append(f"train.epochs={args.epochs}")
    if getattr(args, "strategy", None):
        sets.append(f"train.strategy={args.strategy}")
    config = load_config(PipelineConfig, file=args.config, overrides=sets)
    snapshot = getattr(args, "snapshot", None)
    freeze = bool(getattr(args, "freeze", False))
    run_now = bool(getattr(args, "run_now", False))
    if snapshot and freeze:
        raise ConfigError("--freeze writes a snapshot and --snapshot trains on one: pick one")
    if (snapshot or freeze) and args.every:
        raise ConfigError("--snapshot/--freeze are one-off runs; they do not take --every")
    if run_now and not args.every:
        raise ConfigError("--run-now only applies with --every (a run without --every runs now)")
    if config.train.strategy == "multiworker" and not snapshot:
        raise ConfigError(
            "train.strategy=multiworker needs --snapshot DIR: every replica must read the same "
            "frozen data (write one with `twotower pipeline --freeze`)"
        )
    if not snapshot:
        _check_store(args.store, scheduled=bool(args.every))
    if args.every:
        next_run_delay(args.every)  # a bad schedule is exit 2, before anything runs
        return run_forever(
            args.every, lambda: _one(args, config), run_now=run_now, skip_errors=(PipelineLocked,)
        )
    if freeze:
        from trainer.pipeline_steps import freeze_snapshot

        print(json.dumps(freeze_snapshot(args.store, Path(args.artifacts), config), indent=2))
        return 0
    if snapshot and not is_chief_task(os.environ.get("TF_CONFIG")):
        from trainer.pipeline_steps import train_as_worker

        train_as_worker(Path(args.artifacts), config, Path(snapshot))
        return 0
    return _one(args, config)


def _check_store(url: str | None, *, scheduled: bool) -> None:
    """The store a run reads must be given and parse; for a one-off run a SQLite file must
    exist (opening a missing one would create an empty store: nothing to train on, when
    the path or the working directory is the mistake). A schedule may start first."""
    from feature_store.urls import missing_sqlite_file, parse_url

    if not url:
        raise ConfigError(
            "no store: pass --store URL or set TWOTOWER_STORE_URL (keeps a password off the command line)"
        )
    parse_url(url)  # a malformed URL is exit 2 before anything runs
    missing = None if scheduled else missing_sqlite_file(url)
    if missing is not None:
        raise ConfigError(
            f"no store file {missing}: nothing was ingested there (run `twotower ingest` or start "
            "`twotower serve` first, or pass --store URL / set TWOTOWER_STORE_URL)"
        )


def _one(args: argparse.Namespace, config: PipelineConfig) -> int:
    try:
        report = run_once(
            args.store,
            args.artifacts,
            config,
            force=args.force,
            snapshot=getattr(args, "snapshot", None),
        )
    except PipelineLocked as exc:
        print(f"twotower pipeline: {exc}", file=sys.stderr)
        return 1
    json.dump(report, sys.stdout, indent=2, default=str)
    print()
    sys.stdout.flush()
    if report["outcome"] == "refused":
        print(
            f"twotower pipeline: quality gate refused {report['version']}: {report['reason']}",
            file=sys.stderr,
        )
        for line in gate_lines(report):
            print(line, file=sys.stderr)
        return 1
    if any(row.get("left_out") for row in report.get("gate", [])):
        # A pass that compared less than the gate names: say which rules, and why.
        print(
            f"twotower pipeline: {report['outcome']} {report.get('version')}: {report['reason']}",
            file=sys.stderr,
        )
        for line in gate_lines(report):
            print(line, file=sys.stderr)
    return 0


def gate_lines(report: dict[str, Any]) -> list[str]:
    """One line per gate rule that met a published version: both figures and the verdict
    (``REGRESSION``, ``ok``, or ``left out: why``)."""
    lines = []
    for row in report.get("gate", []):
        if row.get("published") is None:
            continue
        verdict = (
            row["why"]
            if row.get("left_out")
            else f"{'ok' if row['ok'] else 'REGRESSION'}, tolerance {row['tolerance']}"
        )
        lines.append(
            f"  {row['metric']:>18}: published {row['published']:.4f} -> candidate "
            f"{row['candidate']:.4f} ({verdict})"
        )
    return lines
