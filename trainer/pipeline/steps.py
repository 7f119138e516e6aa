"""The steps a run is made of: the training window, the data set, the warm start,
training the candidate (see :func:`trainer.pipeline.run.gated_run` for their order)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common import artifacts
from common.artifact_format import read_item_ids
from common.urls import redact_url
from trainer.config import TrainerConfig, architecture_changes
from trainer.data.item_quality import metadata_feature_names
from trainer.pipeline.config import EVENTS_DIR
from trainer.pipeline.snapshot import SnapshotError, load_item_metadata, load_snapshot
from trainer.pipeline.state import checkpoint_dir, clear_checkpoints

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


def version_item_ids(art: Path, version: str) -> np.ndarray:
    return read_item_ids(artifacts.version_dir(art, version) / artifacts.ITEMS)


def has_test_users(ds: Dataset) -> bool:
    from trainer.data.examples import build_eval_set

    return len(build_eval_set(ds, "test", 1, 1)) > 0


def events_at_last_gate(
    state: dict[str, Any], published_manifest: dict[str, Any] | None
) -> int | None:
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


def warm_version(
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


def train_candidate(
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


def training_key(
    config: TrainerConfig, archive_run: int, archived: int, events: int, snapshot: str | None
) -> dict[str, Any]:
    return {
        "archive_run": archive_run,
        "archived_events": archived,
        "window_events": events,
        "snapshot": snapshot,
        "config": config.as_dict(),
    }


@dataclass(frozen=True)
class RunInput:
    """What a run trains on: the archived events (or a frozen snapshot's) and where they came from.

    Attributes:
      events: every archived event, in log order (before the window).
      metadata: item metadata frozen with the events; ``metadata_origin`` names where
        it was read (for the message when it is missing).
      archive_run, archived, new: the archive's last run, its event count, and the
        events this run added (0 for a snapshot).
      snapshot_id, pinned: a snapshot's id and the version it warm-starts from.
      source: the data source as reports and manifests name it (password hidden).
    """

    events: list[Event]
    metadata: Any
    metadata_origin: str
    archive_run: int
    archived: int
    new: int
    snapshot_id: str | None
    pinned: str | None
    source: str


def run_input(store_url: str | None, art: Path, snapshot: str | Path | None) -> RunInput:
    """A frozen snapshot, or the store's new events moved into the archive and the archive read."""
    if snapshot is not None:
        events, meta = load_snapshot(snapshot)
        return RunInput(
            events=events,
            metadata=load_item_metadata(snapshot, meta),
            metadata_origin=OLD_SNAPSHOT,
            archive_run=int(meta["archive_run"]),
            archived=int(meta["archived_events"]),
            new=0,
            snapshot_id=str(meta["id"]),
            pinned=meta.get("warm_version"),
            source=f"snapshot:{meta['id']}",
        )
    from feature_store.archive import compact, read_compacted, read_item_metadata

    assert store_url is not None
    compacted = compact(store_url, art / EVENTS_DIR, consumer="pipeline")
    return RunInput(
        # With the store's URL, an erasure recorded since the compaction is applied too.
        events=read_compacted(art / EVENTS_DIR, url=store_url),
        # The compaction refreshed the archive's copy of the store's item metadata.
        metadata=read_item_metadata(art / EVENTS_DIR),
        metadata_origin=f"{art / EVENTS_DIR}",
        archive_run=compacted.run,
        archived=compacted.total,
        new=compacted.new_events,
        snapshot_id=None,
        pinned=None,
        source=f"events:{redact_url(store_url)}",
    )
