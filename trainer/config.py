"""The trainer's typed configuration (keys as in docs/CONTRACT.md: ``model.encoder``, ``loss.logq``...)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Section):
    encoder: Literal["mean", "gru", "attention"] = "mean"
    """User-tower sequence encoder over the positive history."""
    embedding_dim: int = Field(64, ge=4, le=1024)
    """Output embedding size of both towers."""
    history_length: int = Field(50, ge=1, le=1000)
    """H: most recent positives fed to the user tower."""
    dislike_length: int = Field(10, ge=1, le=1000)
    """D: most recent dislikes fed to the user tower."""
    use_dislike_input: bool = True
    """Feed the dislike history to the user tower (dislikes as inputs, not only labels)."""
    dislike_pathway: Literal["concat", "subtract"] = "concat"
    """How the user tower uses the dislike history (with ``use_dislike_input``):
    ``concat`` = an encoding of it enters the MLP beside the history's;
    ``subtract`` = a learned, count-gated move of the user vector away from the
    disliked items' directions (see trainer/towers.py)."""
    use_item_features: bool = True
    """Add item metadata (category/genre) embeddings to the item tower where the source has them."""
    item_dislike_ratio_buckets: int = Field(0, ge=0, le=1000)
    """K > 0: an item-tower feature of the item's dislike ratio, dislikes / (positives +
    dislikes) among its TRAIN events only, cut into K equal-width bins, plus a "too few
    events" value (see trainer/data/item_quality.py); independent of
    ``use_item_features`` and baked into the exported item vectors. 0 = off. An
    architecture key: changing it cold-starts."""
    item_dislike_ratio_min_events: int = Field(5, ge=1)
    """Items with fewer train events (positives + dislikes) than this get the
    ``dislike_ratio`` feature's "too few events" value."""
    item_graph_neighbors: int = Field(0, ge=0, le=50)
    """K > 0: the item tower adds to each item's id embedding the mean id embedding
    of its K nearest items on the item co-occurrence graph of the TRAIN positives
    (cosine of the user x item matrix's columns, as trainer/reference.py computes
    it), times ``item_graph_weight``: one step of LightGCN-style smoothing inside
    the item tower, so an item with few events borrows from the items its users
    also chose; still one exported vector per item. 0 = off. An architecture key."""
    item_graph_weight: float = Field(1.0, ge=0.0)
    """How much of the neighbours' mean embedding is added (with ``item_graph_neighbors``)."""
    hidden_units: int = Field(128, ge=0)
    """Width of the towers' hidden layer (0 = a single linear projection)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    attention_heads: int = Field(2, ge=1)
    attention_layers: int = Field(1, ge=1)
    l2: float = Field(0.0, ge=0.0)
    """L2 penalty on the embedding tables."""


class LossConfig(_Section):
    temperature: float = Field(0.2, gt=0.0)
    """tau: logits are cos(u, v) / tau."""
    logq: Literal["streaming", "counts", "none"] = "streaming"
    """Where the logQ correction's sampling probability comes from."""
    logq_label: Literal["corrected", "exact"] = "corrected"
    """``corrected``: every logit, the row's own label's too, gets -log q (LOSSES.md);
    ``exact``: the row's own label is not a Monte Carlo sample of its partition and
    gets none, the other candidates keep theirs ("Correcting the LogQ Correction",
    Khrylchenko et al. 2025; see trainer/losses.py)."""
    ntr_weight: float = Field(20.0, ge=0.0)
    """lambda of the not-to-recommend term; 0 disables it."""
    dislike_weight: float = Field(1.0, ge=0.0)
    """w: per-row weight of a dislike in the NTR term."""
    ntr_state: Literal["before", "after"] = "before"
    """The user state an NTR row is scored from: ``before`` = strictly before the
    dislike (every row's rule); ``after`` = with the row's own item as the most
    recent dislike input, so the term teaches the user tower that a user who has
    just disliked an item does not want it (what responsiveness@20 probes; see
    trainer/data/examples.py). Needs ``model.use_dislike_input`` to matter."""
    mixed_negatives: int = Field(0, ge=0)
    """Uniformly sampled extra candidates per batch (0 = in-batch only)."""
    memory_batches: int = Field(0, ge=0, le=64)
    """K > 0: a cross-batch memory. The positive labels of the last K global batches,
    embedded by the current item tower, join the candidates as negatives, and every
    candidate's q counts the K extra draws (see trainer/retrieval_task.py). 0 = off."""
    remove_accidental_hits: bool = True
    dislike_negatives: int = Field(0, ge=0)
    """N: a positive row's candidates also hold the user's N most recent dislikes
    before t (from its dislike input, so N <= model.dislike_length), with no logQ
    correction (see trainer/losses.py). 0 = off."""
    dedupe_candidates: bool = False
    """One candidate slot per distinct item, q = P(item in the step's candidates)
    (see trainer/losses.py); False = LOSSES.md's convention (every copy is a slot).
    Off: on ml-100k validation it costs 0.015 recall@20 (3 seeds), on Gowalla it is a tie."""


class FrequencyConfig(_Section):
    alpha: float = Field(0.01, gt=0.0, le=1.0)
    buckets: int = Field(1 << 20, ge=16)
    hashes: int = Field(2, ge=1, le=16)
    initial_gap: float = Field(100.0, gt=0.0)
    """B starts here (steps); p starts at 1 / initial_gap."""


class TrainConfig(_Section):
    epochs: int = Field(20, ge=0)
    batch_size: int = Field(1024, ge=2)
    learning_rate: float = Field(0.003, gt=0.0)
    seed: int = 42
    checkpoint_every: int = Field(200, ge=1)
    """Steps between checkpoints (resume after a kill continues from the last one)."""
    early_stopping_patience: int = Field(3, ge=0)
    """Epochs without a better validation recall@20 before stopping (0 = never stop early)."""
    lr_decay: float = Field(1.0, gt=0.0, le=1.0)
    """Factor on the learning rate after each epoch without a better validation
    recall@20 (1 = a constant rate). A resumed run continues at the rate it had;
    ``refit`` replays the first run's rates epoch by epoch."""
    strategy: Literal["default", "mirrored", "multiworker"] = "default"
    max_steps_per_epoch: int | None = Field(None, ge=1)
    """Cap on steps per epoch (for quick runs)."""
    valid_max_users: int | None = Field(5000, ge=1)
    """Validation recall@20 (early stopping, similarity choice) on a seeded sample of this many users."""
    refit: bool = False
    """After the run chose its epochs (early stopping) and similarity on validation, train
    a fresh model on train + valid for those epochs and export that one (test inputs then
    hold the valid events too); the manifest's ``training.refit`` says whether it was done."""


class SplitConfig(_Section):
    max_users_eval: int | None = Field(None, ge=1)
    """Evaluate on a seeded sample of this many test users (None = all)."""
    dislike_holdout: str = "last_fraction:0.2"
    """``last_fraction:F`` (0 < F < 1): the dislikes among each user's last F of events
    (by time) are held out of training and judged, against the user's held-out
    positive, by ``like_dislike_auc`` and ``dislike_share@20``; ``none`` = no such
    holdout (those metrics do not apply). Applies to timestamped sources with
    dislikes only (see trainer/data/split.py)."""
    dislike_holdout_users: float = Field(1.0, gt=0.0, le=1.0)
    """Share of users (a stable hash of the user id) whose last dislikes are held
    out; the others train on every dislike leave-last-out allows."""
    dislike_valid_share: float = Field(0.2, gt=0.0, lt=1.0)
    """Share of the held-out users (the same hash) whose held-out events are
    validation answers; the others' are test answers."""

    @field_validator("dislike_holdout")
    @classmethod
    def _holdout_spec(cls, value: str) -> str:
        kind, _, fraction = value.partition(":")
        try:
            ok = value == "none" or (kind == "last_fraction" and 0.0 < float(fraction) < 1.0)
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"must be 'none' or 'last_fraction:F' with 0 < F < 1, got {value!r}")
        return value


class ExportConfig(_Section):
    exact_index_max_items: int = Field(50_000, ge=1)
    """Corpora up to this size get an exact (flat) index."""
    target_recall_at_100: float = Field(0.95, gt=0.0, le=1.0)
    """Approximate indexes are tuned until recall@100 vs exact reaches this on sampled queries."""
    ivf_codec: Literal["flat", "sq8"] = "sq8"
    """How an IVF index stores the item vectors: ``sq8``, 8 bits per dimension (a
    quarter of the memory and a faster scan; serving re-scores the candidates with the
    exact vectors, so answers carry exact scores), or ``flat`` float32. The recall
    target is measured on the index as built; an sq8 index that cannot reach it at any
    nprobe stores float32 instead (the manifest's ``index.params.codec`` says which)."""
    similarity: Literal["auto", "cosine", "dot"] = "auto"
    """Similarity of the exported index; ``auto`` picks the better on validation recall@20."""
    keep_versions: int = Field(5, ge=1)
    popular_items: int = Field(1000, ge=1)
    """How many most-popular item ids the manifest keeps for the cold-start fallback."""


class TrainerConfig(_Section):
    """Everything ``twotower train`` reads; saved whole into the manifest."""

    #: ``TWOTOWER_PIPELINE__*`` variables belong to ``twotower pipeline`` (same container).
    foreign_env_sections: ClassVar[tuple[str, ...]] = ("pipeline",)

    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    frequency: FrequencyConfig = FrequencyConfig()
    train: TrainConfig = TrainConfig()
    split: SplitConfig = SplitConfig()
    export: ExportConfig = ExportConfig()

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @model_validator(mode="after")
    def _dislike_negatives_fit_the_input(self) -> TrainerConfig:
        if self.loss.dislike_negatives > self.model.dislike_length:
            raise ValueError(
                f"loss.dislike_negatives={self.loss.dislike_negatives} exceeds "
                f"model.dislike_length={self.model.dislike_length}: the dislike negatives "
                "are taken from the row's dislike input (raise model.dislike_length)"
            )
        return self


#: ``model.*`` keys that change the towers' variables: a version trained with other
#: values cannot initialise this model (the scheduled job then cold-starts).
ARCHITECTURE_KEYS = (
    "embedding_dim",
    "encoder",
    "hidden_units",
    "attention_heads",
    "attention_layers",
    "use_item_features",
    "item_dislike_ratio_buckets",
    "item_graph_neighbors",
    "item_graph_weight",
    "use_dislike_input",
    "dislike_pathway",
)


def architecture_changes(old: TrainerConfig, new: TrainerConfig) -> list[str]:
    """``"model.<key> changed (old -> new)"`` for each of :data:`ARCHITECTURE_KEYS` that differs."""
    return [
        f"model.{key} changed ({getattr(old.model, key)!r} -> {getattr(new.model, key)!r})"
        for key in ARCHITECTURE_KEYS
        if getattr(old.model, key) != getattr(new.model, key)
    ]


#: Learning from dislikes, chosen on ml-100k validation by the rule of
#: ``bench.tune --suite ml100k_dislikes`` (5 seeds; tune_ml100k_dislikes.md): at most 1%
#: recall@20 below positives-only, dislike_share@20 near the lowest, then the best
#: like_dislike_auc. The class defaults (concat, λ 20) lose 6% recall@20 there.
DISLIKE_DEFAULTS: dict[str, dict[str, Any]] = {
    "model": {"dislike_pathway": "subtract"},
    "loss": {"ntr_weight": 5.0, "dislike_negatives": 5},
}


#: Defaults tuned on validation data, per kind of source (README "Tuning"): the
#: class defaults above are the winners on the synthetic generator's validation
#: splits (and ml-100k's, apart from the dislike settings); these per-kind entries
#: only override what differs. Applied under the user's file/env/--set values.
SOURCE_DEFAULTS: dict[str, dict[str, Any]] = {
    "synthetic": {},
    "movielens": DISLIKE_DEFAULTS,
    # Gowalla validation recall@20 after 3 epochs: tau 0.05 -> 0.185, 0.1 -> 0.199, 0.2 -> 0.149.
    # History width H (the evaluation input is all of a user's train items up to H):
    # H 50 -> 0.1972, 100 -> 0.1987, 200 -> 0.2001 (bench/results/tune_gowalla_history.md):
    # within seed spread, and each row's input grows with H, so 100.
    # No dislikes in these files: the dislike branch of the user tower would only
    # ever see padding (untrained weights, noise in responsiveness), so it is off.
    # train.refit, judged on validation (bench/results/tune_gowalla_refit_on_valid.md:
    # Gowalla one level down, its held-out split = the real validation split): recall@20
    # 0.1964 -> 0.2077, ndcg@20 0.1091 -> 0.1152; ml-100k positives as LightGCN files,
    # the same way, 3 seeds: 0.3002 -> 0.3114 (tune_ml100k_lightgcn_refit_on_valid.md).
    # loss.logq_label=exact: Gowalla valid
    # recall@20 0.2084 -> 0.2122 (one seed, best epoch 6 -> 10), ml-100k positives as
    # LightGCN files 0.3088 -> 0.3072 (3 seeds, a tie): not worth ~45% more epochs, so
    # the label stays corrected (tune_gowalla_logq_label.md, tune_ml100k_lightgcn_logq_label.md).
    # Item-graph smoothing (model.item_graph_*), validation recall@20 off -> K 20, w 2:
    # Gowalla (3 epochs) 0.1983 -> 0.2097 (tune_gowalla_item_graph.md); ml-100k positives
    # as LightGCN files (3 seeds) 0.3088 -> 0.3247 (tune_ml100k_lightgcn_item_graph.md);
    # the best arm on both, ahead of K 10 at w 1 and w 2.
    "lightgcn": {
        "loss": {"temperature": 0.1},
        "model": {
            "use_dislike_input": False,
            "history_length": 100,
            "item_graph_neighbors": 20,
            "item_graph_weight": 2.0,
        },
        "train": {"refit": True},
    },
    # Store events keep the class defaults: on the synthetic generator's events (the
    # pipeline's gate repro, 300 users) the movielens pick reached recall@20 0.047 against
    # 0.201. The pipeline follows the dislike settings of the version it warm-starts from
    # (trainer.pipeline.config.FOLLOWED), so a MovieLens-trained model is continued as it is.
    "events": {},
}
