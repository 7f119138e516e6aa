"""An exported version loaded back, and its metrics: the library behind ``twotower evaluate``.

Its flags are read in :mod:`twotower.commands.evaluate`. The numbers are those
``twotower train`` recorded for the version (:mod:`trainer.evaluate` computes both).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts, interrupts
from common.artifact_format import read_items
from trainer._tf import tf
from trainer.config import TrainerConfig
from trainer.data.dataset import Dataset, EvalSet
from trainer.data.examples import build_eval_set, build_judged_set
from trainer.data.split import apply_dislike_holdout, train_and_valid
from trainer.data.vocab import align_items
from trainer.evaluate import (
    eval_notes,
    evaluate,
    popular_baseline,
    sample_rows,
    version_dislike_holdout,
    version_neighbors,
)
from trainer.export import embed_in_chunks
from trainer.metrics import write_topk_jsonl

log = logging.getLogger(__name__)

__all__ = ["ExportedModel", "evaluate_version"]


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


def version_test_sets(
    manifest: dict[str, Any], ds: Dataset, item_ids: np.ndarray, split: str = "test"
) -> tuple[Dataset, EvalSet, EvalSet]:
    """(``ds`` as the version was tested on it, its ``split`` users, its judged ones).

    ``ds`` aligned to the version's items, with the dislike holdout the version was
    trained with ("none" for a version from before it existed), train + valid
    merged when the version was refit; the users sampled as its config says.
    ``split="valid"`` gives the validation users instead (a refit version has none:
    it trained on them).
    """
    cfg = TrainerConfig.model_validate(manifest["config"])
    holdout_spec, valid_share, users_share = version_dislike_holdout(manifest)
    ds = apply_dislike_holdout(align_items(ds, item_ids), holdout_spec, valid_share, users_share)
    if manifest.get("training", {}).get("refit", {}).get("done"):
        if split != "test":
            raise ValueError(f"version was refit on train + valid: it has no {split} split")
        ds = train_and_valid(ds)  # as the version was trained and tested (train.refit)
    H, D = int(manifest["history_length"]), int(manifest["dislike_length"])
    cap, seed = cfg.split.max_users_eval, cfg.train.seed
    users = sample_rows(build_eval_set(ds, split, H, D), cap, seed)
    judged = sample_rows(build_judged_set(ds, split, H, D), cap, seed)
    return ds, users, judged


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
    ds, test, judged = version_test_sets(m, ds, exported.item_ids)
    holdout_spec = version_dislike_holdout(m)[0]
    H = int(m["history_length"])
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
