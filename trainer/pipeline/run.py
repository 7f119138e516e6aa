"""One pipeline run (the order of :mod:`trainer.pipeline`), a snapshot freeze and a
multi-worker replica's share."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import artifacts
from common.config import ConfigError
from common.urls import STORE_URL_ENV, redact_url
from trainer.pipeline import reports
from trainer.pipeline.config import EVENTS_DIR, PipelineConfig, PipelineSection
from trainer.pipeline.gate import (
    HOLDOUT_METRICS,
    apply_gate,
    evaluate_on_holdout,
    holdout_mismatch,
    shared_holdout,
)
from trainer.pipeline.reports import append_history, trim_history
from trainer.pipeline.snapshot import (
    load_item_metadata,
    load_snapshot,
    pinned_versions,
    prune_snapshots,
    write_snapshot,
)
from trainer.pipeline.state import (
    PipelineLocked,
    annotate,
    apply_retention,
    now_iso,
    read_state,
    run_lock,
    write_state,
)
from trainer.pipeline.steps import (
    OLD_SNAPSHOT,
    RunInput,
    events_at_last_gate,
    events_dataset,
    has_test_users,
    run_input,
    train_candidate,
    training_key,
    version_item_ids,
    warm_version,
    window,
)

if TYPE_CHECKING:
    from trainer.config import TrainerConfig
    from trainer.data.dataset import Dataset

log = logging.getLogger(__name__)


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
    art = Path(art)
    started = time.monotonic()
    report: dict[str, Any] = {
        "run_id": artifacts.new_version_id(),
        "started_at": now_iso(),
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
        report["finished_at"] = now_iso()
        report["seconds"] = round(time.monotonic() - started, 2)
        try:
            report["report_path"] = str(
                reports.write_report(art, report, config.pipeline.keep_reports)
            )
        except Exception as exc:  # the report is best effort: never mask the run's own outcome
            log.warning("could not write the report of run %s: %s", report["run_id"], exc)


def publish_or_refuse(
    art: Path,
    candidate: str,
    published: str | None,
    info: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    passed: bool,
    force: bool,
) -> tuple[str, str, bool]:
    """Publish ``candidate`` (compare-and-swap against ``published``) or refuse it, and record
    the outcome in its manifest; returns ``(outcome, reason, conflict)``."""
    # Rules the gate could not compare, and why (reported whatever the outcome).
    skipped = [f"{r['metric']} ({r['why']})" for r in rows if r.get("left_out")]
    conflict = False
    if passed or force:
        annotate(art, candidate, {**info, "outcome": "published"})
        try:
            artifacts.publish(art, candidate, expected=published)
        except artifacts.PublishConflict as exc:
            conflict = True
            outcome_name, reason = "refused", str(exc)
        else:
            outcome_name = "published"
            reason = "gate passed" if passed else "gate failed, published with --force"
            if skipped:
                reason += f"; not compared: {'; '.join(skipped)}"
            if not passed:
                log.warning("quality gate FAILED but --force given: published %s", candidate)
    else:
        bad = [r["metric"] for r in rows if not r["ok"]]
        outcome_name, reason = "refused", f"regression on {', '.join(bad)}"
        if skipped:
            reason += f"; not compared: {'; '.join(skipped)}"
    if outcome_name == "refused":
        annotate(art, candidate, {**info, "outcome": "refused", "reason": reason})
    return outcome_name, reason, conflict


def gated_run(
    report: dict[str, Any],
    store_url: str | None,
    art: Path,
    config: PipelineConfig,
    *,
    force: bool,
    progress: bool,
    snapshot: str | Path | None,
) -> None:
    """Archive -> (skip?) -> train -> shared-holdout gate -> CAS publish or refuse -> retention."""
    pc = config.pipeline
    inp = run_input(store_url, art, snapshot)
    events = window(inp.events, pc.window_days)
    published = artifacts.latest_version(art)
    published_manifest = artifacts.read_manifest(art, published) if published else None
    baseline = events_at_last_gate(read_state(art), published_manifest)
    fresh = None if baseline is None else inp.archived - baseline
    report["events"] = {
        "new": inp.new,
        "archived": inp.archived,
        "archive_run": inp.archive_run,
        "window": len(events),
        "since_last_gated_run": fresh,
    }
    if not events:
        report.update(outcome="skipped", reason="no events to train on (the event log is empty)")
        return
    # A snapshot run is an explicit request; otherwise skip when the gate has already
    # judged (nearly) this data, whatever it decided.
    skip = snapshot is None and published and not force
    if skip and fresh is not None and fresh < pc.min_new_events:
        report.update(
            outcome="skipped",
            reason=f"{fresh} new events since the last gated run "
            f"(< pipeline.min_new_events = {pc.min_new_events})",
        )
        return

    ds = events_dataset(events, inp.source, inp.metadata, inp.metadata_origin)
    if published and not force and not has_test_users(ds):
        # Nothing to compare the versions on: training would end in a blind gate.
        report.update(
            outcome="skipped",
            reason="no user in the training window has a held-out event to gate on "
            "(users need 3 positives); widen pipeline.window_days or wait for more events",
        )
        return
    tcfg = config.trainer()
    pinned = snapshot is not None
    warm_from = inp.pinned if pinned else published
    candidate = _train(report, art, inp, ds, tcfg, len(events), warm_from, pinned, progress)
    passed, rows = _gate(report, art, ds, tcfg, pc, candidate, published, published_manifest)
    info = {
        "run_id": report["run_id"],
        "archive_run": inp.archive_run,
        "archived_events": inp.archived,
        "window_events": len(events),
        "snapshot": inp.snapshot_id,
        "gate_passed": passed,
        "compared_with": published,
        "holdout": report["holdout"],
    }
    outcome_name, reason, conflict = publish_or_refuse(
        art, candidate, published, info, rows, passed=passed, force=force
    )
    report.update(outcome=outcome_name, version=candidate, reason=reason)
    if not conflict:  # a conflict was never judged against what is published now: retry next time
        _record_gated_run(art, report, inp, published)
    report["pruned"] = apply_retention(art, pc.keep_versions, pc.keep_refused, pinned_versions(art))
    append_history(art, {**report, "finished_at": now_iso()})
    trim_history(art, pc.keep_history)


def _train(
    report: dict[str, Any],
    art: Path,
    inp: RunInput,
    ds: Dataset,
    tcfg: TrainerConfig,
    window_events: int,
    warm_from: str | None,
    pinned: bool,
    progress: bool,
) -> str:
    """The candidate's id; how it started (warm or not, :func:`warm_version`) in ``report``."""
    warm = warm_version(art, warm_from, tcfg, ds, pinned=pinned)
    key = training_key(tcfg, inp.archive_run, inp.archived, window_events, inp.snapshot_id)
    outcome = train_candidate(art, inp.source, ds, tcfg, warm, key, chief=True, progress=progress)
    report["warm_start"] = outcome.training.get("warm_start")
    return outcome.version


def _gate(
    report: dict[str, Any],
    art: Path,
    ds: Dataset,
    tcfg: TrainerConfig,
    pc: PipelineSection,
    candidate: str,
    published: str | None,
    published_manifest: dict[str, Any] | None,
) -> tuple[bool, list[dict[str, Any]]]:
    """The candidate against the published version on one holdout; the holdout, both
    versions' metrics and the gate's rows go into ``report``; returns ``(passed, rows)``."""
    # One holdout for both versions: same users, same catalog (trainer.pipeline.gate).
    ids = [version_item_ids(art, candidate)] + (
        [version_item_ids(art, published)] if published else []
    )
    holdout = shared_holdout(
        ds,
        ids,
        tcfg.split.max_users_eval,
        tcfg.train.seed,
        tcfg.split.dislike_holdout,
        tcfg.split.dislike_valid_share,
        tcfg.split.dislike_holdout_users,
    )
    report["holdout"] = holdout.describe()
    cand_metrics = evaluate_on_holdout(art, candidate, holdout)
    report["candidate"] = {"version": candidate, "metrics": cand_metrics}
    pub_metrics = evaluate_on_holdout(art, published, holdout) if published else None
    if published:
        report["published"] = {"version": published, "metrics": pub_metrics}
    # A published version trained with another dislike holdout may have trained on its answers.
    mismatch = (
        holdout_mismatch(published_manifest, artifacts.read_manifest(art, candidate))
        if published_manifest
        else None
    )
    passed, rows = apply_gate(
        cand_metrics,
        pub_metrics,
        pc.gate,
        min_users=pc.gate_min_users,
        left_out=dict.fromkeys(HOLDOUT_METRICS, mismatch) if mismatch else None,
    )
    report["gate"] = rows
    return passed, rows


def _record_gated_run(
    art: Path, report: dict[str, Any], inp: RunInput, published: str | None
) -> None:
    """The state file's last gated run: what the next run's skip rule counts new events from."""
    write_state(
        art,
        {
            "last_gated_run": {
                "run_id": report["run_id"],
                "archive_run": inp.archive_run,
                "archived_events": inp.archived,
                "outcome": report["outcome"],
                "version": report["version"],
                "compared_with": published,
                "finished_at": now_iso(),
            }
        },
    )


def freeze_snapshot(store_url: str, art: Path, config: PipelineConfig) -> dict[str, Any]:
    """``--freeze``: archive new events, write a snapshot of the whole archive; returns its summary."""
    from feature_store.archive import compact, read_compacted, read_item_metadata
    from trainer.data.errors import DataError

    with run_lock(art):
        compacted = compact(store_url, art / EVENTS_DIR, consumer="pipeline")
        events = read_compacted(art / EVENTS_DIR, url=store_url)
        if not events:
            raise DataError(f"{redact_url(store_url)}: the event log is empty; nothing to freeze")
        warm = artifacts.latest_version(art)
        path = write_snapshot(
            art,
            events,
            archive_run=compacted.run,
            archived_events=compacted.total,
            warm_version=warm,
            item_metadata=read_item_metadata(art / EVENTS_DIR),
        )
        pruned = prune_snapshots(art, max(config.pipeline.keep_snapshots, 1))
    return {
        "snapshot": str(path),
        "id": path.name,
        "events": len(events),
        "archive_run": compacted.run,
        "warm_version": warm,
        "pruned": pruned,
    }


def train_as_worker(art: Path, config: PipelineConfig, snapshot: Path) -> None:
    """A non-chief replica of a multi-worker run: the same data, model and checkpoint key as
    the chief, nothing written to ``art`` (the chief gates and publishes)."""
    events, meta = load_snapshot(snapshot)
    events = window(events, config.pipeline.window_days)
    if not events:
        return  # the chief skips too
    source = f"snapshot:{meta['id']}"
    ds = events_dataset(events, source, load_item_metadata(snapshot, meta), OLD_SNAPSHOT)
    tcfg = config.trainer()
    warm = warm_version(art, meta.get("warm_version"), tcfg, ds, pinned=True)
    key = training_key(
        tcfg, int(meta["archive_run"]), int(meta["archived_events"]), len(events), str(meta["id"])
    )
    train_candidate(art, source, ds, tcfg, warm, key, chief=False, progress=False)


def check_store(url: str | None, *, scheduled: bool) -> None:
    """The store a run reads must be given and parse; for a one-off run a SQLite file must
    exist (opening a missing one would create an empty store: nothing to train on, when
    the path or the working directory is the mistake). A schedule may start first."""
    from feature_store.urls import missing_sqlite_file, parse_url

    if not url:
        raise ConfigError(
            f"no store: pass --store URL or set {STORE_URL_ENV} (keeps a password off the command line)"
        )
    parse_url(url)  # a malformed URL is exit 2 before anything runs
    missing = None if scheduled else missing_sqlite_file(url)
    if missing is not None:
        raise ConfigError(
            f"no store file {missing}: nothing was ingested there (run `twotower ingest` or start "
            f"`twotower serve` first, or pass --store URL / set {STORE_URL_ENV})"
        )


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
