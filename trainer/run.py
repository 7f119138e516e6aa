"""Training and evaluating a version: the library behind ``twotower train`` and ``twotower evaluate``.

Their flags are read in :mod:`twotower.commands.train` and :mod:`twotower.commands.evaluate`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts, interrupts
from common.artifact_format import read_items
from common.config import load_config
from trainer._tf import tf
from trainer.checkpoints import checkpoint_paths, is_chief, prune_stale_runs, run_directory
from trainer.config import SOURCE_DEFAULTS, TrainerConfig
from trainer.data.dataset import TRAIN, VALID, Dataset, EvalSet, Examples
from trainer.data.examples import build_eval_set, build_judged_set, build_train_examples
from trainer.data.item_quality import DISLIKE_RATIO, tower_item_features
from trainer.data.sources import load_source
from trainer.data.split import apply_dislike_holdout
from trainer.data.vocab import align_items, widen_feature_sizes
from trainer.evaluate import (
    EmbedFn,
    eval_notes,
    evaluate,
    popular_baseline,
    reference_neighbors,
    sample_rows,
    version_dislike_holdout,
    version_neighbors,
)
from trainer.export import embed_in_chunks, export_version, serving_embed
from trainer.metrics import write_topk_jsonl
from trainer.model import TwoTowerModel, l2_normalize
from trainer.train import (
    IncompatibleCheckpointError,
    Trainer,
    make_strategy,
    seed_everything,
)
from trainer.warmstart import load_version_items, warm_start

log = logging.getLogger(__name__)

__all__ = ["ExportedModel", "evaluate_version", "is_chief", "train", "trainer_config"]

#: Queries that tune the approximate index and measure its recall vs exact search.
INDEX_QUERIES = 500


@dataclass
class TrainOutcome:
    version: str
    metrics: dict[str, Any]
    baseline_popular: dict[str, Any]
    training: dict[str, Any]
    manifest_extra: dict[str, Any]
    model: TwoTowerModel | None = None


def trainer_config(
    kind: str,
    file: str | None = None,
    overrides: list[str] | None = None,
    epochs: int | None = None,
    strategy: str | None = None,
) -> TrainerConfig:
    """The effective config: tuned defaults for the source kind < file < env < --set."""
    sets = list(overrides or [])
    if epochs is not None:
        sets.append(f"train.epochs={epochs}")
    if strategy is not None:
        sets.append(f"train.strategy={strategy}")
    return load_config(TrainerConfig, file=file, overrides=sets, base=SOURCE_DEFAULTS.get(kind, {}))


def exact_item_probabilities(ds: Dataset, batch_size: int, distinct: bool = False) -> np.ndarray:
    """Token-indexed float32 [N + 1] from exact train counts (``loss.logq=counts``).

    Expected occurrences of each item per batch of ``batch_size`` rows, or with
    ``distinct`` the probability that it occurs at least once (the quantity
    ``loss.dedupe_candidates`` corrects by). Entry 0 (padding) is 0.
    """
    counts = ds.train_item_counts().astype(np.float64)
    rows = max(float((ds.split == 0).sum()), 1.0)
    share = counts / rows
    per_batch = (
        -np.expm1(batch_size * np.log1p(-np.minimum(share, 1.0 - 1e-12)))
        if distinct
        else share * batch_size
    )
    return np.concatenate([[0.0], per_batch]).astype(np.float32)


def train_and_valid(ds: Dataset) -> Dataset:
    """``ds`` with its validation events made training events (``train.refit``)."""
    return replace(ds, split=np.where(ds.split == VALID, TRAIN, ds.split).astype(ds.split.dtype))


def training_examples(ds: Dataset, cfg: TrainerConfig, epoch: int) -> Examples:
    """The training rows of ``epoch`` as the config asks for them (H, D, seed, w)."""
    return build_train_examples(
        ds,
        cfg.model.history_length,
        cfg.model.dislike_length,
        seed=cfg.train.seed,
        epoch=epoch,
        dislike_weight=cfg.loss.dislike_weight,
        ntr_state=cfg.loss.ntr_state,
    )


def train(
    spec: str,
    out: str | Path,
    config: TrainerConfig,
    *,
    ds: Dataset | None = None,
    warm_version: str | None = None,
    checkpoint_dir: str | Path | None = None,
    publish: bool = True,
    skip_bad_lines: bool = False,
    progress: bool = True,
    prune: bool = True,
) -> TrainOutcome:
    """Train on ``spec`` (or the given ``ds``), evaluate, export a version under ``out``.

    ``warm_version`` names a version of ``out`` to warm-start from ("latest" = the
    published one). ``checkpoint_dir`` holds the resumable state (default
    ``out/.train-<hash of data, config and warm version>``, see
    :mod:`trainer.checkpoints`); a checkpoint there that does not fit this
    model is discarded with a warning and training starts fresh. ``prune``
    keeps only the newest ``export.keep_versions`` versions afterwards (callers
    with their own retention pass False). Returns the new version id and its
    metrics.

    Under :func:`common.interrupts.handled`, Ctrl-C stops the run at any phase
    (a swallowed ``KeyboardInterrupt`` is raised again at the next step or
    phase) and nothing is published; the checkpoint directory stays, so the
    same call resumes.
    """
    out = Path(out)
    if ds is None:
        ds = load_source(spec, skip_bad_lines=skip_bad_lines, progress=progress)
    interrupts.check()
    warm_from = None
    if warm_version is not None:
        warm_from = artifacts.resolve_version(
            out, None if warm_version == "latest" else warm_version
        )
        manifest, old_ids = load_version_items(out, warm_from)
        ds = widen_feature_sizes(align_items(ds, old_ids), manifest.get("item_feature_sizes", {}))
    cfg = config
    # The dislikes of each user's last events, held out of training for the dislike
    # metrics (trainer.data.split).
    ds = apply_dislike_holdout(
        ds,
        cfg.split.dislike_holdout,
        cfg.split.dislike_valid_share,
        cfg.split.dislike_holdout_users,
    )
    # The item tower's features: metadata, plus the train-split dislike ratio when asked
    # for (computed here, after the holdout, from TRAIN events only).
    tower_features, tower_sizes = tower_item_features(ds, cfg.model)
    seed_everything(cfg.train.seed)
    strategy = make_strategy(cfg.train.strategy)
    H, D = cfg.model.history_length, cfg.model.dislike_length
    cache: dict[int, Examples] = {}

    def examples_fn(epoch: int) -> Examples:
        assert ds is not None  # rebound by train.refit: read at call time
        # Timestamped data gives the same rows every epoch; build them once.
        key = epoch if not ds.timestamped else 0
        if key not in cache:
            cache.clear()
            cache[key] = training_examples(ds, cfg, epoch)
        return cache[key]

    valid = sample_rows(
        build_eval_set(ds, "valid", H, D), cfg.train.valid_max_users, cfg.train.seed
    )
    ckpt_dir = (
        Path(checkpoint_dir) if checkpoint_dir else run_directory(out, spec, cfg, warm_from, ds)
    )
    chief = is_chief(strategy)
    # Every worker restores from the chief's directory; only the chief writes there.
    restore_dir, write_dir = checkpoint_paths(ckpt_dir, strategy)

    def build() -> tuple[TwoTowerModel, Trainer, dict | None]:
        assert ds is not None  # rebound by train.refit: read at call time
        seed_everything(cfg.train.seed)  # a rebuilt model starts as a first one would
        probs = (
            exact_item_probabilities(ds, cfg.train.batch_size, cfg.loss.dedupe_candidates)
            if cfg.loss.logq == "counts"
            else None
        )
        with strategy.scope():
            model = TwoTowerModel(cfg, ds.num_items, tower_features, tower_sizes, probs)
            model.build_all()
        summary = warm_start(model, out, warm_from) if warm_from else None
        trainer = Trainer(
            model,
            fit_cfg,
            examples_fn,
            stop_on,
            restore_dir,
            strategy,
            progress,
            write_dir=write_dir,
        )
        return model, trainer, summary

    # What the loop reads (train.refit changes both); the model and manifest keep cfg.
    fit_cfg, stop_on = cfg, (valid if len(valid) else None)
    model, trainer, warm_summary = build()
    interrupts.check()  # tf_keras swallows a KeyboardInterrupt raised while the towers build
    try:
        result = trainer.fit()
    except IncompatibleCheckpointError as exc:
        log.warning(
            "discarding the checkpoint in %s: it does not fit this run (%s); training from scratch",
            restore_dir,
            exc,
        )
        if chief:
            shutil.rmtree(restore_dir, ignore_errors=True)
        model, trainer, warm_summary = build()
        interrupts.check()
        result = trainer.fit(resume=False)

    # Every figure below is computed with the exported tower's own function, so
    # ``twotower evaluate`` of the version reproduces it exactly.
    item_raw = model.embed_items()
    item_counts = ds.train_item_counts()
    items_by_sim = {"cosine": l2_normalize(item_raw), "dot": item_raw}
    embed_by_sim = {sim: serving_embed(model, sim) for sim in items_by_sim}
    # Full validation metrics per geometry: what the similarity choice and tuning read
    # (never the test split). SSM paper: cosine-train/dot-test can win.
    if len(valid):
        log.info("evaluating on %d validation users (cosine and dot similarity)...", len(valid))
    valid_judged = sample_rows(
        build_judged_set(ds, "valid", H, D), cfg.train.valid_max_users, cfg.train.seed
    )
    valid_eval = {
        sim: evaluate(
            embed_by_sim[sim], items_by_sim[sim], valid, item_counts, None, valid_judged
        ).metrics
        for sim in ("cosine", "dot")
        if len(valid)
    }
    valid_by_sim = {sim: float(m["recall@20"]) for sim, m in valid_eval.items()}
    similarity: str = cfg.export.similarity
    if similarity == "auto":
        similarity = (
            max(valid_by_sim, key=lambda s: (valid_by_sim[s], s == "cosine"))
            if valid_by_sim
            else "cosine"
        )
    interrupts.check()
    refit: dict[str, Any] = {"done": False}
    if cfg.train.refit and len(valid) and result.best_epoch > 0:
        # The epochs and similarity are chosen; train them afresh on train + valid. The
        # chosen model's own test figures are kept for the record (nothing reads them).
        before = sample_rows(
            build_eval_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed
        )
        refit["test_metrics_without_refit"] = evaluate(
            embed_by_sim[similarity], items_by_sim[similarity], before, item_counts, None
        ).metrics
        ds = train_and_valid(ds)
        tower_features, tower_sizes = tower_item_features(ds, cfg.model)
        fit_cfg = cfg.model_copy(
            update={"train": cfg.train.model_copy(update={"epochs": result.best_epoch})}
        )
        stop_on = None  # no early stopping: the epochs are fixed
        cache.clear()
        restore_dir, write_dir = checkpoint_paths(ckpt_dir / "refit", strategy)
        log.info("refit: %d epochs on train + valid...", result.best_epoch)
        model, trainer, _ = build()
        interrupts.check()
        refit_result = trainer.fit()
        refit.update(
            done=True,
            epochs=refit_result.epochs_run,
            steps=refit_result.steps,
            seconds=round(refit_result.seconds, 2),
            examples_per_second=round(refit_result.examples_per_second, 1),
        )
        item_raw = model.embed_items()
        item_counts = ds.train_item_counts()
        items_by_sim = {"cosine": l2_normalize(item_raw), "dot": item_raw}
        embed_by_sim = {sim: serving_embed(model, sim) for sim in items_by_sim}
    test = sample_rows(build_eval_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed)
    log.info("evaluating on %d test users (%s similarity)...", len(test), similarity)
    embed = embed_by_sim[similarity]
    judged = sample_rows(
        build_judged_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed
    )
    metrics = evaluate(
        embed,
        items_by_sim[similarity],
        test,
        item_counts,
        reference_neighbors(ds, ds.num_items),
        judged,
    ).metrics
    other = "dot" if similarity == "cosine" else "cosine"
    metrics_other = evaluate(
        embed_by_sim[other], items_by_sim[other], test, item_counts, None, judged
    ).metrics
    baseline = popular_baseline(test, item_counts, judged)
    training = {
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_valid_recall@20": result.best_valid_recall,
        "steps": result.steps,
        "seconds": round(result.seconds, 2),
        "examples_per_second": round(result.examples_per_second, 1),
        "history": result.history,
        "resumed_from": result.resumed_from,
        "warm_start": warm_summary,
        "valid_recall@20_by_similarity": valid_by_sim,
        "valid_metrics": valid_eval.get(similarity, {}),
        "refit": refit,
    }
    extra = {
        "training": training,
        "metrics_other_similarity": {"similarity": other, "metrics": metrics_other},
        "item_feature_sizes": {
            name: size
            for name, size in tower_sizes.items()
            if cfg.model.use_item_features or name == DISLIKE_RATIO
        },
        "eval": eval_notes(ds, test, metrics, H, "test", cfg.split.dislike_holdout),
    }
    interrupts.check()
    if not chief:
        shutil.rmtree(write_dir, ignore_errors=True)
        return TrainOutcome("", metrics, baseline, training, extra, model)
    version = export_version(
        out,
        model,
        item_ids=ds.item_ids,
        item_counts=item_counts,
        similarity=similarity,
        index_queries=_index_queries(embed, valid, examples_fn),
        metrics=metrics,
        baseline_popular=baseline,
        data=ds.summary(),
        extra=extra,
        publish=publish,
    )
    if prune:
        artifacts.prune_versions(out, cfg.export.keep_versions)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    prune_stale_runs(out)
    return TrainOutcome(version, metrics, baseline, training, extra, model)


def _index_queries(
    embed: EmbedFn, valid: EvalSet, examples_fn: Callable[[int], Examples]
) -> np.ndarray | None:
    """float32 [q, dim] real user vectors that tune the index: validation users, never test.

    A source without a validation split falls back to training rows' inputs.
    """
    if len(valid):
        return embed(valid.history[:INDEX_QUERIES], valid.dislikes[:INDEX_QUERIES])
    ex = examples_fn(0)
    if not len(ex):
        return None
    return embed(ex.history[:INDEX_QUERIES], ex.dislikes[:INDEX_QUERIES])


class ExportedModel:
    """A version loaded from disk: the SavedModel tower and the item embeddings."""

    def __init__(self, art: str | Path, version: str | None = None):
        self.version = artifacts.resolve_version(art, version)
        vdir = artifacts.version_dir(art, self.version)
        self.manifest = artifacts.read_manifest(art, self.version)
        items = read_items(vdir / artifacts.ITEMS)
        self.item_ids, self.item_emb = items.ids, items.embeddings
        loaded = tf.saved_model.load(str(vdir / artifacts.USER_TOWER))
        self._loaded = loaded  # keep the trackable alive
        self._fn = loaded.signatures["serving_default"]

    def embed(self, history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        """float32 [u, dim] user vectors of token arrays [u, H], [u, D]."""
        return embed_in_chunks(self._fn, history, dislikes, self.item_emb.shape[1])


def evaluate_version(
    art: str | Path, version: str | None, ds: Dataset, topk_out: str | None = None
) -> dict:
    """Metrics of an exported version on ``ds``'s test split (the protocol of docs/CONTRACT.md).

    The masking is the training's (see :mod:`trainer.data.examples`): the items
    of the user's train and valid events, dislikes included, never a held-out
    dislike; ``topk_out`` lists are ranked under that mask and the popularity
    baseline uses it too.
    """
    exported = ExportedModel(art, version)
    interrupts.check()
    m = exported.manifest
    cfg = TrainerConfig.model_validate(m["config"])
    # The holdout the version was trained with ("none" for a version from before it existed).
    holdout_spec, valid_share, users_share = version_dislike_holdout(m)
    ds = apply_dislike_holdout(
        align_items(ds, exported.item_ids), holdout_spec, valid_share, users_share
    )
    if m.get("training", {}).get("refit", {}).get("done"):
        ds = train_and_valid(ds)  # as the version was trained and tested (train.refit)
    H, D = int(m["history_length"]), int(m["dislike_length"])
    test = sample_rows(build_eval_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed)
    judged = sample_rows(
        build_judged_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed
    )
    n = len(exported.item_ids)
    counts = ds.train_item_counts()[:n]
    log.info("evaluating version %s on %d test users...", exported.version, len(test))
    ev = evaluate(exported.embed, exported.item_emb, test, counts, version_neighbors(ds, n), judged)
    if topk_out:
        write_topk_jsonl(
            topk_out, [str(ds.user_ids[u]) for u in test.users], ev.topk, exported.item_ids
        )
    return {
        "version": exported.version,
        "similarity": m["similarity"],
        "metrics": ev.metrics,
        "baseline_popular": popular_baseline(test, counts, judged),
        "eval": eval_notes(ds, test, ev.metrics, H, "test", holdout_spec),
    }
