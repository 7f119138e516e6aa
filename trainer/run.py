"""Training a version: the library behind ``twotower train``.

Its flags are read in :mod:`twotower.commands.train`. :func:`train` prepares the data
(a warm start's item alignment, the dislike holdout), fits (:mod:`trainer.fitting`),
picks the similarity on validation, refits on train + valid when asked, evaluates on
test and exports the version. Evaluating an exported version (``twotower evaluate``)
is :mod:`trainer.exported`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts, interrupts
from common.config import load_config
from trainer.checkpoints import prune_stale_runs
from trainer.config import SOURCE_DEFAULTS, TrainerConfig
from trainer.data.dataset import Dataset, EvalSet, Examples
from trainer.data.examples import build_eval_set, build_judged_set
from trainer.data.item_quality import DISLIKE_RATIO
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
)
from trainer.export import export_version, serving_embed
from trainer.fitting import Fit
from trainer.model import TwoTowerModel, l2_normalize
from trainer.train import TrainResult
from trainer.warmstart import load_version_items

log = logging.getLogger(__name__)

__all__ = ["TrainOutcome", "train", "trainer_config"]

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
    cfg = config
    ds, warm_from = _prepared(ds, out, cfg, warm_version)
    run = Fit(out, spec, cfg, ds, warm_from, checkpoint_dir, progress)
    model, result, warm_summary = run.fit()

    # Every figure below is computed with the exported tower's own function, so
    # ``twotower evaluate`` of the version reproduces it exactly.
    emb = _Embeddings.of(model, run.ds)
    valid_eval = _validation_metrics(emb, run.ds, run.valid, cfg)
    valid_by_sim = {sim: float(m["recall@20"]) for sim, m in valid_eval.items()}
    similarity = _similarity(cfg.export.similarity, valid_by_sim)
    interrupts.check()
    refit: dict[str, Any] = {"done": False}
    if cfg.train.refit and len(run.valid) and result.best_epoch > 0:
        model, emb, refit = _refit(run, emb, similarity, result.best_epoch, result.history)
    ds = run.ds
    test, metrics, other, baseline = _test_metrics(emb, ds, cfg, similarity)
    training = _training_record(
        result, warm_summary, valid_by_sim, valid_eval.get(similarity, {}), refit
    )
    extra = _manifest_extra(run, training, other, test, metrics)
    interrupts.check()
    if not run.chief:
        shutil.rmtree(run.write_dir, ignore_errors=True)
        return TrainOutcome("", metrics, baseline, training, extra, model)
    version = export_version(
        out,
        model,
        item_ids=ds.item_ids,
        item_counts=emb.counts,
        similarity=similarity,
        index_queries=_index_queries(emb.embed[similarity], run.valid, run.examples),
        metrics=metrics,
        baseline_popular=baseline,
        data=ds.summary(),
        extra=extra,
        publish=publish,
    )
    if prune:
        artifacts.prune_versions(out, cfg.export.keep_versions)
    shutil.rmtree(run.ckpt_dir, ignore_errors=True)
    prune_stale_runs(out)
    return TrainOutcome(version, metrics, baseline, training, extra, model)


def _manifest_extra(
    run: Fit,
    training: dict[str, Any],
    other: dict[str, Any],
    test: EvalSet,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's sections beyond the metrics: training, the other similarity, eval."""
    cfg = run.cfg
    return {
        "training": training,
        "metrics_other_similarity": other,
        "item_feature_sizes": {
            name: size
            for name, size in run.tower_sizes.items()
            if cfg.model.use_item_features or name == DISLIKE_RATIO
        },
        "eval": eval_notes(
            run.ds, test, metrics, cfg.model.history_length, "test", cfg.split.dislike_holdout
        ),
    }


def _prepared(
    ds: Dataset, out: Path, cfg: TrainerConfig, warm_version: str | None
) -> tuple[Dataset, str | None]:
    """``ds`` as the run trains on it, and the version it warm-starts from (or None).

    Aligned to the warm-start version's items and feature sizes, then with the
    dislikes of each user's last events held out of training for the dislike metrics
    (:mod:`trainer.data.split`).
    """
    warm_from = None
    if warm_version is not None:
        warm_from = artifacts.resolve_version(
            out, None if warm_version == "latest" else warm_version
        )
        manifest, old_ids = load_version_items(out, warm_from)
        ds = widen_feature_sizes(align_items(ds, old_ids), manifest.get("item_feature_sizes", {}))
    ds = apply_dislike_holdout(
        ds,
        cfg.split.dislike_holdout,
        cfg.split.dislike_valid_share,
        cfg.split.dislike_holdout_users,
    )
    return ds, warm_from


@dataclass
class _Embeddings:
    """A model's item embeddings and user-embedding function per similarity; train counts."""

    items: dict[str, np.ndarray]
    embed: dict[str, EmbedFn]
    counts: np.ndarray

    @classmethod
    def of(cls, model: TwoTowerModel, ds: Dataset) -> _Embeddings:
        item_raw = model.embed_items()
        counts = ds.train_item_counts()
        items = {"cosine": l2_normalize(item_raw), "dot": item_raw}
        return cls(items, {sim: serving_embed(model, sim) for sim in items}, counts)


def _validation_metrics(
    emb: _Embeddings, ds: Dataset, valid: EvalSet, cfg: TrainerConfig
) -> dict[str, dict[str, Any]]:
    """Full validation metrics per similarity (none without validation users).

    What the similarity choice and tuning read (never the test split). SSM paper:
    cosine-train/dot-test can win.
    """
    H, D = cfg.model.history_length, cfg.model.dislike_length
    if len(valid):
        log.info("evaluating on %d validation users (cosine and dot similarity)...", len(valid))
    valid_judged = sample_rows(
        build_judged_set(ds, "valid", H, D), cfg.train.valid_max_users, cfg.train.seed
    )
    return {
        sim: evaluate(emb.embed[sim], emb.items[sim], valid, emb.counts, None, valid_judged).metrics
        for sim in ("cosine", "dot")
        if len(valid)
    }


def _similarity(setting: str, valid_by_sim: dict[str, float]) -> str:
    """``export.similarity``, or for ``auto`` the one of higher validation recall@20."""
    if setting != "auto":
        return setting
    if not valid_by_sim:
        return "cosine"
    return max(valid_by_sim, key=lambda s: (valid_by_sim[s], s == "cosine"))


def _refit(
    run: Fit, emb: _Embeddings, similarity: str, epochs: int, history: list[dict]
) -> tuple[TwoTowerModel, _Embeddings, dict[str, Any]]:
    """``train.refit``: the chosen epochs and similarity trained afresh on train + valid.

    Each epoch at the rate the first run's epoch had (``history``; ``train.lr_decay``
    may have lowered it). The chosen model's own test figures are kept for the record
    (nothing reads them).
    """
    cfg = run.cfg
    H, D = cfg.model.history_length, cfg.model.dislike_length
    before = sample_rows(
        build_eval_set(run.ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed
    )
    refit: dict[str, Any] = {"done": False}
    refit["test_metrics_without_refit"] = evaluate(
        emb.embed[similarity], emb.items[similarity], before, emb.counts, None
    ).metrics
    chosen = history[:epochs]
    # A run resumed from a checkpoint of an older version has no rates: the configured one.
    replay = (
        [float(r["learning_rate"]) for r in chosen]
        if all("learning_rate" in r for r in chosen)
        else None
    )
    model, result = run.refit(epochs, replay)
    refit.update(
        done=True,
        epochs=result.epochs_run,
        learning_rates=[record["learning_rate"] for record in result.history],
        steps=result.steps,
        seconds=round(result.seconds, 2),
        examples_per_second=round(result.examples_per_second, 1),
    )
    return model, _Embeddings.of(model, run.ds), refit


def _test_metrics(
    emb: _Embeddings, ds: Dataset, cfg: TrainerConfig, similarity: str
) -> tuple[EvalSet, dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(test users, their metrics, the other similarity's, the popularity baseline's)."""
    H, D = cfg.model.history_length, cfg.model.dislike_length
    test = sample_rows(build_eval_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed)
    log.info("evaluating on %d test users (%s similarity)...", len(test), similarity)
    judged = sample_rows(
        build_judged_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed
    )
    metrics = evaluate(
        emb.embed[similarity],
        emb.items[similarity],
        test,
        emb.counts,
        reference_neighbors(ds, ds.num_items),
        judged,
    ).metrics
    other = "dot" if similarity == "cosine" else "cosine"
    metrics_other = evaluate(
        emb.embed[other], emb.items[other], test, emb.counts, None, judged
    ).metrics
    baseline = popular_baseline(test, emb.counts, judged)
    return test, metrics, {"similarity": other, "metrics": metrics_other}, baseline


def _training_record(
    result: TrainResult,
    warm_summary: dict | None,
    valid_by_sim: dict[str, float],
    valid_metrics: dict[str, Any],
    refit: dict[str, Any],
) -> dict[str, Any]:
    """The manifest's ``training`` section."""
    return {
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
        "valid_metrics": valid_metrics,
        "refit": refit,
    }


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
