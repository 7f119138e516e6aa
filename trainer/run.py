"""``twotower train`` and ``twotower evaluate``: the trainer's programs."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer._tf import tf
from trainer.config import SOURCE_DEFAULTS, TrainerConfig
from trainer.data.dataset import Dataset
from trainer.data.examples import build_eval_set, build_train_examples
from trainer.data.sources import load_source
from trainer.data.vocab import align_items
from trainer.evaluate import (
    evaluate,
    popular_baseline,
    reference_neighbors,
    sample_rows,
)
from trainer.export import export_version
from trainer.metrics import write_topk_jsonl
from trainer.model import TwoTowerModel, l2_normalize
from trainer.train import Trainer, make_strategy, seed_everything
from trainer.warmstart import load_version_items, warm_start
from twotower import artifacts
from twotower.config import load_config

log = logging.getLogger(__name__)


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


def exact_item_probabilities(ds: Dataset, batch_size: int) -> np.ndarray:
    """Token-indexed [N + 1] expected occurrences per batch, from exact train counts."""
    counts = ds.train_item_counts().astype(np.float64)
    rows = max(float((ds.split == 0).sum()), 1.0)
    return np.concatenate([[0.0], counts * batch_size / rows]).astype(np.float32)


def _checkpoint_dir(out: Path, spec: str, config: TrainerConfig, warm: str | None) -> Path:
    key = json.dumps({"data": spec, "config": config.as_dict(), "warm": warm}, sort_keys=True)
    return out / f".train-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


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
    published one). ``prune`` keeps only the newest ``export.keep_versions``
    versions afterwards (callers with their own retention pass False).
    Returns the new version id and its metrics.
    """
    out = Path(out)
    if ds is None:
        ds = load_source(spec, skip_bad_lines=skip_bad_lines, progress=progress)
    warm_from = None
    if warm_version is not None:
        warm_from = artifacts.resolve_version(
            out, None if warm_version == "latest" else warm_version
        )
        _manifest, old_ids = load_version_items(out, warm_from)
        ds = align_items(ds, old_ids)
    cfg = config
    seed_everything(cfg.train.seed)
    strategy = make_strategy(cfg.train.strategy)
    H, D = cfg.model.history_length, cfg.model.dislike_length
    probs = (
        exact_item_probabilities(ds, cfg.train.batch_size) if cfg.loss.logq == "counts" else None
    )
    with strategy.scope():
        model = TwoTowerModel(cfg, ds.num_items, ds.item_features, ds.item_feature_sizes, probs)
        model.build_all()
    warm_summary = warm_start(model, out, warm_from) if warm_from else None

    cache: dict[int, Any] = {}

    def examples_fn(epoch: int):
        # Timestamped data gives the same rows every epoch; build them once.
        key = epoch if not ds.timestamped else 0
        if key not in cache:
            cache.clear()
            cache[key] = build_train_examples(ds, H, D, seed=cfg.train.seed, epoch=epoch)
        return cache[key]

    valid = sample_rows(
        build_eval_set(ds, "valid", H, D), cfg.train.valid_max_users, cfg.train.seed
    )
    ckpt_dir = (
        Path(checkpoint_dir) if checkpoint_dir else _checkpoint_dir(out, spec, cfg, warm_from)
    )
    chief = is_chief(strategy)
    if not chief:
        # Multi-worker: every worker trains (collectives need all of them), only the
        # chief checkpoints into ART and exports; the others write to scratch.
        ckpt_dir = Path(tempfile.mkdtemp(prefix="twotower-worker-"))
    trainer = Trainer(
        model, cfg, examples_fn, valid if len(valid) else None, ckpt_dir, strategy, progress
    )
    result = trainer.fit()

    # Similarity of the export: cosine (the training geometry) or raw inner product,
    # whichever ranks the validation users better (SSM paper: cosine-train/dot-test can win).
    item_raw = model.embed_items()
    item_counts = ds.train_item_counts()
    similarity: str = cfg.export.similarity
    items_by_sim = {"cosine": l2_normalize(item_raw), "dot": item_raw}
    # Full validation metrics per geometry: what the similarity choice and tuning read
    # (never the test split).
    valid_eval = {
        sim: evaluate(_model_embed(model, sim), items_by_sim[sim], valid, item_counts, None).metrics
        for sim in ("cosine", "dot")
        if len(valid)
    }
    valid_by_sim = {sim: float(m["recall@20"]) for sim, m in valid_eval.items()}
    if similarity == "auto":
        similarity = (
            max(valid_by_sim, key=lambda s: (valid_by_sim[s], s == "cosine"))
            if valid_by_sim
            else "cosine"
        )
    valid_metrics = valid_eval.get(similarity, {})
    test = sample_rows(build_eval_set(ds, "test", H, D), cfg.split.max_users_eval, cfg.train.seed)
    neighbors = reference_neighbors(ds, ds.num_items)
    items_export = items_by_sim[similarity]
    embed = _model_embed(model, similarity)
    ev = evaluate(embed, items_export, test, item_counts, neighbors)
    metrics = ev.metrics
    other = "dot" if similarity == "cosine" else "cosine"
    other_items = items_by_sim[other]
    metrics_other = evaluate(
        _model_embed(model, other), other_items, test, item_counts, None
    ).metrics
    baseline = popular_baseline(test, item_counts)
    queries = embed(test.history[:500], test.dislikes[:500]) if len(test) else None
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
        "valid_metrics": valid_metrics,
    }
    extra = {
        "training": training,
        "metrics_other_similarity": {"similarity": other, "metrics": metrics_other},
        "item_feature_sizes": dict(ds.item_feature_sizes) if cfg.model.use_item_features else {},
        "eval": {
            "split": "test",
            "users": len(test),
            "protocol": "all-ranking, train/valid items masked",
        },
    }
    if not chief:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
        return TrainOutcome("", metrics, baseline, training, extra, model)
    version = export_version(
        out,
        model,
        item_ids=ds.item_ids,
        item_counts=item_counts,
        similarity=similarity,
        index_queries=queries,
        metrics=metrics,
        baseline_popular=baseline,
        data=ds.summary(),
        extra=extra,
        publish=publish,
    )
    if prune:
        artifacts.prune_versions(out, cfg.export.keep_versions)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    return TrainOutcome(version, metrics, baseline, training, extra, model)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True unless this is a non-chief worker of a multi-worker run (TF_CONFIG)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _model_embed(model: TwoTowerModel, similarity: str):
    def embed(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        emb = model.embed_users(history, dislikes)
        return l2_normalize(emb) if similarity == "cosine" else emb

    return embed


def train_command(args: argparse.Namespace) -> int:
    kind = args.data.split(":", 1)[0]
    cfg = trainer_config(kind, args.config, args.overrides, args.epochs, args.strategy)
    outcome = train(
        args.data,
        args.out,
        cfg,
        warm_version=args.warm_start,
        checkpoint_dir=args.checkpoint_dir,
        publish=not args.no_publish,
        skip_bad_lines=args.skip_bad_lines,
        progress=True,
    )
    json.dump(
        {
            "version": outcome.version,
            "published": bool(outcome.version) and not args.no_publish,
            "metrics": outcome.metrics,
            "baseline_popular": outcome.baseline_popular,
            "training": {k: v for k, v in outcome.training.items() if k != "history"},
        },
        sys.stdout,
        indent=2,
        default=_plain,
    )
    print()
    return 0


def _plain(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(type(obj).__name__)


class ExportedModel:
    """A version loaded from disk: the SavedModel tower and the item embeddings."""

    def __init__(self, art: str | Path, version: str | None = None):
        self.version = artifacts.resolve_version(art, version)
        vdir = artifacts.version_dir(art, self.version)
        self.manifest = artifacts.read_manifest(art, self.version)
        with np.load(vdir / artifacts.ITEMS) as npz:
            self.item_ids = npz["ids"].astype(str)
            self.item_emb = npz["embeddings"].astype(np.float32)
        loaded = tf.saved_model.load(str(vdir / artifacts.USER_TOWER))
        self._loaded = loaded  # keep the trackable alive
        self._fn = loaded.signatures["serving_default"]

    def embed(self, history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(history), 4096):
            res = self._fn(
                history=tf.constant(history[start : start + 4096], tf.int32),
                dislikes=tf.constant(dislikes[start : start + 4096], tf.int32),
            )
            out.append(res["embedding"].numpy())
        return np.concatenate(out) if out else np.zeros((0, self.item_emb.shape[1]), np.float32)


def evaluate_version(
    art: str | Path, version: str | None, ds: Dataset, topk_out: str | None = None
) -> dict:
    """Metrics of an exported version on ``ds``'s test split (SPEC protocol)."""
    exported = ExportedModel(art, version)
    m = exported.manifest
    ds = align_items(ds, exported.item_ids)
    cfg = TrainerConfig.model_validate(m["config"])
    test = sample_rows(
        build_eval_set(ds, "test", m["history_length"], m["dislike_length"]),
        cfg.split.max_users_eval,
        cfg.train.seed,
    )
    n = len(exported.item_ids)
    counts = ds.train_item_counts()[:n]
    neighbors = reference_neighbors(ds, ds.num_items)[:n]
    neighbors = np.where(neighbors >= n, -1, neighbors)
    ev = evaluate(exported.embed, exported.item_emb, test, counts, neighbors)
    if topk_out:
        write_topk_jsonl(
            topk_out, [str(ds.user_ids[u]) for u in test.users], ev.topk, exported.item_ids
        )
    return {
        "version": exported.version,
        "similarity": m["similarity"],
        "metrics": ev.metrics,
        "baseline_popular": popular_baseline(test, counts),
    }


def evaluate_command(args: argparse.Namespace) -> int:
    ds = load_source(args.data, skip_bad_lines=args.skip_bad_lines, progress=True)
    result = evaluate_version(args.artifacts, args.version, ds, args.topk_out)
    json.dump(result, sys.stdout, indent=2, default=_plain)
    print()
    return 0
