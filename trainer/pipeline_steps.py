"""The steps of one pipeline run, a snapshot freeze, and a multi-worker replica's share.

:func:`gated_run` is called by :func:`trainer.pipeline.run_once` under the run
lock and fills in the run's report; the module docstring of
:mod:`trainer.pipeline` lists the steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common import artifacts
from common.artifact_format import read_item_ids
from common.urls import redact_url
from trainer.config import TrainerConfig, architecture_changes
from trainer.data.item_quality import metadata_feature_names
from trainer.gate import (
    HOLDOUT_METRICS,
    apply_gate,
    evaluate_on_holdout,
    holdout_mismatch,
    shared_holdout,
)
from trainer.pipeline import (
    EVENTS_DIR,
    PipelineConfig,
    _now,
    annotate,
    apply_retention,
    checkpoint_dir,
    clear_checkpoints,
    read_state,
    run_lock,
    write_state,
)
from trainer.reports import append_history, trim_history
from trainer.snapshot import (
    SnapshotError,
    load_item_metadata,
    load_snapshot,
    pinned_versions,
    prune_snapshots,
    write_snapshot,
)

if TYPE_CHECKING:
    from feature_store.events import Event
    from trainer.data.dataset import Dataset
    from trainer.run import TrainOutcome

log = logging.getLogger(__name__)


def window(events: list[Event], window_days: float | None) -> list[Event]:
    """The events of the last ``window_days`` days before the newest event (all when None)."""
    if window_days is None or not events:
        return events
    horizon = max(e.ts for e in events) - window_days * 86400
    return [e for e in events if e.ts >= horizon]


OLD_SNAPSHOT = "the snapshot was frozen before item metadata was frozen with it; freeze a new one"


def events_dataset(
    events: list[Event], source: str, metadata: dict[str, dict[str, Any]] | None, where: str
) -> Dataset:
    """The training Dataset of the window's events, with the item features of ``metadata``."""
    from trainer.data.item_metadata import attach_item_metadata
    from trainer.data.sources import dataset_from_events

    return attach_item_metadata(dataset_from_events(events, source=source), metadata, where=where)


def _item_ids(art: Path, version: str) -> np.ndarray:
    return read_item_ids(artifacts.version_dir(art, version) / artifacts.ITEMS)


def _has_test_users(ds: Dataset) -> bool:
    from trainer.data.examples import build_eval_set

    return len(build_eval_set(ds, "test", 1, 1)) > 0


def _baseline(state: dict[str, Any], published_manifest: dict[str, Any] | None) -> int | None:
    """Archived-event count of the newest snapshot a gate has already judged (None: never)."""
    seen = []
    last = state.get("last_gated_run") or {}
    pub = (published_manifest or {}).get("pipeline") or {}
    for value in (last.get("archived_events"), pub.get("archived_events")):
        if isinstance(value, int):
            seen.append(value)
    return max(seen) if seen else None


def can_warm_start(manifest: dict[str, Any] | None, config: TrainerConfig) -> bool:
    """Same architecture as ``manifest``'s version? Otherwise the run cold-starts (logged)."""
    if not manifest:
        return False
    try:
        old = TrainerConfig.model_validate(manifest["config"])
    except Exception as exc:  # a config from another release: cold start, not a failure
        log.warning(
            "not warm-starting from %s: its config does not load (%s)", manifest.get("version"), exc
        )
        return False
    changed = architecture_changes(old, config)
    if old.loss.logq != config.loss.logq:
        changed.append(f"loss.logq changed ({old.loss.logq!r} -> {config.loss.logq!r})")
    if (old.frequency.buckets, old.frequency.hashes) != (
        config.frequency.buckets,
        config.frequency.hashes,
    ):
        changed.append("frequency.buckets/hashes changed")
    if changed:
        log.warning(
            "not warm-starting from %s: %s; training from scratch",
            manifest.get("version"),
            "; ".join(changed),
        )
        return False
    return True


def _warm_version(
    art: Path, version: str | None, config: TrainerConfig, ds: Dataset, *, pinned: bool
) -> str | None:
    """The version to warm-start from, or None to train from scratch.

    ``pinned``: the version was recorded in a snapshot; its absence is an error
    (every replica must make the same choice), not a silent cold start.
    """
    if version is None:
        return None
    try:
        manifest = artifacts.read_manifest(art, version)
    except artifacts.ArtifactError:
        if pinned:
            raise SnapshotError(
                f"the snapshot warm-starts from {version}, which is no longer in {art}; "
                "freeze a new snapshot"
            ) from None
        return None
    if not can_warm_start(manifest, config):
        return None
    if config.model.use_item_features:
        # The derived dislike_ratio feature is not item metadata (architecture_changes
        # compares its key): metadata names only.
        old_features = metadata_feature_names(manifest.get("item_feature_sizes", {}))
        new_features = metadata_feature_names(ds.item_feature_sizes)
        if old_features != new_features:
            hint = (
                "; the store holds no usable item metadata for these items (`twotower ingest` "
                "writes a source's item features as item metadata)"
                if not new_features
                else ""
            )
            log.warning(
                "not warm-starting from %s: it was trained with item features %s, the "
                "training data has %s%s; training from scratch",
                version,
                ", ".join(old_features) or "none",
                ", ".join(new_features) or "none",
                hint,
            )
            return None
    return version


def _train(
    art: Path,
    source: str,
    ds: Dataset,
    config: TrainerConfig,
    warm: str | None,
    key: dict[str, Any],
    *,
    chief: bool,
    progress: bool,
) -> TrainOutcome:
    """Train into the checkpoint dir of ``key``; a failed warm start falls back to a cold one."""
    from common.tf_logging import import_tensorflow_quietly

    import_tensorflow_quietly()
    from trainer.run import train
    from trainer.warmstart import WarmStartError

    def run(warm_version: str | None) -> TrainOutcome:
        ckpt = checkpoint_dir(art, {**key, "warm": warm_version})
        if chief:
            clear_checkpoints(art, keep=ckpt)  # earlier snapshots' checkpoints cannot resume
        return train(
            source,
            art,
            config,
            ds=ds,
            warm_version=warm_version,
            checkpoint_dir=ckpt,
            publish=False,
            progress=progress,
            prune=False,
        )

    try:
        return run(warm)
    except WarmStartError as exc:
        log.warning("warm start from %s failed (%s); training from scratch", warm, exc)
        return run(None)


def _training_key(
    config: TrainerConfig, archive_run: int, archived: int, events: int, snapshot: str | None
) -> dict[str, Any]:
    return {
        "archive_run": archive_run,
        "archived_events": archived,
        "window_events": events,
        "snapshot": snapshot,
        "config": config.as_dict(),
    }


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
    from feature_store.log import compact, read_compacted, read_item_metadata

    pc = config.pipeline
    snap_id = None
    if snapshot is not None:
        events, meta = load_snapshot(snapshot)
        metadata, where = load_item_metadata(snapshot, meta), OLD_SNAPSHOT
        archive_run, archived, new = int(meta["archive_run"]), int(meta["archived_events"]), 0
        snap_id, pinned, source = (
            str(meta["id"]),
            meta.get("warm_version"),
            f"snapshot:{meta['id']}",
        )
    else:
        assert store_url is not None
        compacted = compact(store_url, art / EVENTS_DIR, consumer="pipeline")
        # With the store's URL, an erasure recorded since the compaction is applied too.
        events = read_compacted(art / EVENTS_DIR, url=store_url)
        # The compaction refreshed the archive's copy of the store's item metadata.
        metadata, where = read_item_metadata(art / EVENTS_DIR), f"{art / EVENTS_DIR}"
        archive_run, archived, new = compacted.run, compacted.total, compacted.new_events
        pinned, source = None, f"events:{redact_url(store_url)}"
    events = window(events, pc.window_days)
    published = artifacts.latest_version(art)
    published_manifest = artifacts.read_manifest(art, published) if published else None
    baseline = _baseline(read_state(art), published_manifest)
    report["events"] = {
        "new": new,
        "archived": archived,
        "archive_run": archive_run,
        "window": len(events),
        "since_last_gated_run": None if baseline is None else archived - baseline,
    }
    if not events:
        report.update(outcome="skipped", reason="no events to train on (the event log is empty)")
        return
    fresh = None if baseline is None else archived - baseline
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

    ds = events_dataset(events, source, metadata, where)
    if published and not force and not _has_test_users(ds):
        # Nothing to compare the versions on: training would end in a blind gate.
        report.update(
            outcome="skipped",
            reason="no user in the training window has a held-out event to gate on "
            "(users need 3 positives); widen pipeline.window_days or wait for more events",
        )
        return
    tcfg = config.trainer()
    warm = _warm_version(
        art, pinned if snapshot is not None else published, tcfg, ds, pinned=snapshot is not None
    )
    key = _training_key(tcfg, archive_run, archived, len(events), snap_id)
    outcome = _train(art, source, ds, tcfg, warm, key, chief=True, progress=progress)
    candidate = outcome.version
    report["warm_start"] = outcome.training.get("warm_start")

    # One holdout for both versions: same users, same catalog (trainer.gate).
    ids = [_item_ids(art, candidate)] + ([_item_ids(art, published)] if published else [])
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

    info = {
        "run_id": report["run_id"],
        "archive_run": archive_run,
        "archived_events": archived,
        "window_events": len(events),
        "snapshot": snap_id,
        "gate_passed": passed,
        "compared_with": published,
        "holdout": report["holdout"],
    }
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
    report.update(outcome=outcome_name, version=candidate, reason=reason)
    if not conflict:  # a conflict was never judged against what is published now: retry next time
        write_state(
            art,
            {
                "last_gated_run": {
                    "run_id": report["run_id"],
                    "archive_run": archive_run,
                    "archived_events": archived,
                    "outcome": outcome_name,
                    "version": candidate,
                    "compared_with": published,
                    "finished_at": _now(),
                }
            },
        )
    report["pruned"] = apply_retention(art, pc.keep_versions, pc.keep_refused, pinned_versions(art))
    append_history(art, {**report, "finished_at": _now()})
    trim_history(art, pc.keep_history)


def freeze_snapshot(store_url: str, art: Path, config: PipelineConfig) -> dict[str, Any]:
    """``--freeze``: archive new events, write a snapshot of the whole archive; returns its summary."""
    from feature_store.log import compact, read_compacted, read_item_metadata
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
    warm = _warm_version(art, meta.get("warm_version"), tcfg, ds, pinned=True)
    key = _training_key(
        tcfg, int(meta["archive_run"]), int(meta["archived_events"]), len(events), str(meta["id"])
    )
    _train(art, source, ds, tcfg, warm, key, chief=False, progress=False)
