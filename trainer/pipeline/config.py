"""The pipeline's configuration: the trainer config plus the ``pipeline`` section,
and the names of what a run keeps under the artifact directory."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from common import artifacts
from common.config import ConfigError, load_config
from trainer.config import ARCHITECTURE_KEYS, SOURCE_DEFAULTS, TrainerConfig
from trainer.pipeline.gate import GateRule, check_gate_names

LOCK_FILE = ".pipeline.lock"


EVENTS_DIR = "events"


STATE_FILE = "pipeline_state.json"


CHECKPOINTS_DIR = ".pipeline-checkpoints"


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


log = logging.getLogger(__name__)

#: What a run takes from the version it warm-starts from, unless the file, the
#: environment or ``--set`` say otherwise: what a warm start needs (the
#: architecture keys, ``loss.logq``, the estimator's table) and the dislike
#: settings tuned with that architecture. A version trained by ``twotower train``
#: on a MovieLens file (``subtract`` pathway) is so continued by the pipeline
#: on store events, whose own defaults are the class defaults.
FOLLOWED: dict[str, tuple[str, ...]] = {
    "model": ARCHITECTURE_KEYS,
    "loss": ("logq", "ntr_weight", "dislike_negatives", "dislike_weight", "ntr_state"),
    "frequency": ("buckets", "hashes"),
}


def followed_settings(published: Mapping[str, Any] | None) -> dict[str, Any]:
    """The :data:`FOLLOWED` keys of a version's ``config`` (its manifest's), as a tree."""
    out: dict[str, Any] = {}
    for section, keys in FOLLOWED.items():
        values = (published or {}).get(section)
        if isinstance(values, Mapping):
            picked = {k: values[k] for k in keys if k in values}
            if picked:
                out[section] = picked
    return out


def published_config(
    art: str | os.PathLike[str], snapshot: str | None = None
) -> dict[str, Any] | None:
    """The ``config`` of the version a run would warm-start from: the one a snapshot
    pins (``--snapshot``), else the published one; None when there is none."""
    from trainer.pipeline.snapshot import read_meta

    if snapshot:
        try:
            version = read_meta(snapshot).get("warm_version")
        except Exception:  # the run reports an unreadable snapshot itself
            return None
    else:
        version = artifacts.latest_version(art) if Path(art).is_dir() else None
    if not version:
        return None
    try:
        config = artifacts.read_manifest(art, version).get("config")
    except artifacts.ArtifactError:
        return None
    return config if isinstance(config, dict) else None


def load_pipeline_config(
    *,
    file: str | os.PathLike[str] | None = None,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    published: Mapping[str, Any] | None = None,
) -> PipelineConfig:
    """The pipeline's config: the store-events defaults (``SOURCE_DEFAULTS["events"]``),
    then what it follows of ``published`` (:func:`followed_settings`, the config of the
    version it warm-starts from), then the file, the environment and ``overrides``
    (:func:`common.config.load_config`). A published config this release cannot load
    is not followed (the run then cold-starts, as
    :func:`trainer.pipeline.steps.can_warm_start` says)."""
    kwargs: dict[str, Any] = {"file": file, "overrides": list(overrides), "environ": environ}
    plain = load_config(PipelineConfig, base=SOURCE_DEFAULTS["events"], **kwargs)
    followed = followed_settings(published)
    if not followed:
        return plain
    base = copy.deepcopy(SOURCE_DEFAULTS["events"])
    for section, values in followed.items():
        base[section] = {**base.get(section, {}), **values}
    try:
        return load_config(PipelineConfig, base=base, **kwargs)
    except ConfigError as exc:  # a config from another release
        log.warning("not following the published version's settings: %s", exc)
        return plain
