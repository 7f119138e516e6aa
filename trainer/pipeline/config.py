"""The pipeline's configuration: the trainer config plus the ``pipeline`` section,
and the names of what a run keeps under the artifact directory."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from trainer.config import TrainerConfig
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
