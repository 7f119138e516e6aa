"""Export a trained model as a versioned artifact (layout in ``common/artifacts.py``)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from common import artifacts, interrupts
from common.artifact_format import write_index, write_items
from trainer._tf import tf
from trainer.index_build import build_index
from trainer.model import TwoTowerModel, l2_normalize

log = logging.getLogger(__name__)

SIGNATURE = "serving_default"


class ServingTower(tf.Module):
    """The user tower behind a fixed signature, with the export's similarity baked in.

    ``history`` int32 [batch, H], ``dislikes`` int32 [batch, D] (tokens, 0 = padding,
    right-aligned) -> ``{"embedding": float32 [batch, dim]}``. Out-of-range tokens are
    treated as padding so a bad caller cannot crash the graph.

    A ``mean`` tower also tracks its variables by plain name as ``plain_weights``
    (:meth:`trainer.towers.UserTower.plain_weights`; the same variables, stored
    once), which serving reads to evaluate the tower in NumPy.
    """

    def __init__(self, model: TwoTowerModel, normalize: bool):
        super().__init__()
        self.user_tower = model.user_tower
        self.num_items = model.num_items
        self.normalize = normalize
        plain = model.user_tower.plain_weights()
        if plain is not None:
            self.plain_weights = plain
        h = model.config.model.history_length
        d = model.config.model.dislike_length
        self.serve = tf.function(
            self._serve,
            input_signature=[
                tf.TensorSpec([None, h], tf.int32, name="history"),
                tf.TensorSpec([None, d], tf.int32, name="dislikes"),
            ],
        )

    def _serve(self, history: tf.Tensor, dislikes: tf.Tensor) -> dict[str, tf.Tensor]:
        def clean(x: tf.Tensor) -> tf.Tensor:
            return tf.where((x < 0) | (x > self.num_items), tf.zeros_like(x), x)

        emb = self.user_tower((clean(history), clean(dislikes)), training=False)
        if self.normalize:
            emb = tf.math.l2_normalize(emb, axis=-1)
        return {"embedding": emb}


#: Users per call of the tower when embedding many (training's evaluation and the
#: exported tower use the same chunks, so both compute bit-identical vectors).
EMBED_CHUNK = 4096


def embed_in_chunks(
    fn: Callable[..., dict[str, tf.Tensor]], history: np.ndarray, dislikes: np.ndarray, dim: int
) -> np.ndarray:
    """float32 [u, dim]: ``fn(history=..., dislikes=...)["embedding"]`` over chunks of users.

    Args:
      fn: the serving signature (loaded or in memory).
      history: int [u, H] tokens; dislikes: int [u, D] tokens.
    """
    out = []
    for start in range(0, len(history), EMBED_CHUNK):
        res = fn(
            history=tf.constant(history[start : start + EMBED_CHUNK], tf.int32),
            dislikes=tf.constant(dislikes[start : start + EMBED_CHUNK], tf.int32),
        )
        out.append(res["embedding"].numpy())
    return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def serving_embed(
    model: TwoTowerModel, similarity: str
) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """The exported tower's function, in memory: tokens [u, H], [u, D] -> float32 [u, dim].

    Evaluating with it before export gives exactly the numbers ``twotower
    evaluate`` computes from the SavedModel afterwards.
    """
    tower = ServingTower(model, normalize=similarity == "cosine")
    dim = model.config.model.embedding_dim

    def embed(history: np.ndarray, dislikes: np.ndarray) -> np.ndarray:
        return embed_in_chunks(tower.serve, history, dislikes, dim)

    return embed


def item_embeddings(model: TwoTowerModel, similarity: str) -> np.ndarray:
    emb = model.embed_items()
    return l2_normalize(emb) if similarity == "cosine" else emb.astype(np.float32)


def export_version(
    art: str | Path,
    model: TwoTowerModel,
    *,
    item_ids: np.ndarray,
    item_counts: np.ndarray,
    similarity: str,
    index_queries: np.ndarray | None,
    metrics: dict[str, Any],
    baseline_popular: dict[str, Any],
    data: dict[str, Any],
    extra: dict[str, Any] | None = None,
    publish: bool = True,
) -> str:
    """Write a complete version under ``art`` and (optionally) publish it.

    Args:
      item_ids: str [N] in index order.
      item_counts: int [N] train popularity (for the cold-start fallback list).
      similarity: ``cosine`` or ``dot``; baked into the tower and item vectors.
      index_queries: float32 [q, dim] real user embeddings (same similarity) used to
        tune an approximate index and measure its recall vs exact search.
    Returns:
      the version id.
    """
    cfg = model.config
    items = item_embeddings(model, similarity)
    log.info("building the FAISS index over %d items...", len(items))
    index, index_info = build_index(
        items,
        exact_max_items=cfg.export.exact_index_max_items,
        target_recall=cfg.export.target_recall_at_100,
        queries=index_queries,
        seed=cfg.train.seed,
        ivf_codec=cfg.export.ivf_codec,
    )
    popular = _fallback_items(item_ids, item_counts, cfg.export.popular_items)
    interrupts.check()
    with artifacts.staging_version(art) as (version, vdir):
        log.info("writing version %s (user tower, item vectors, index)...", version)
        tower = ServingTower(model, normalize=similarity == "cosine")
        tf.saved_model.save(
            tower, str(vdir / artifacts.USER_TOWER), signatures={SIGNATURE: tower.serve}
        )
        write_items(vdir / artifacts.ITEMS, item_ids, items)
        write_index(index, vdir / artifacts.INDEX)
        model.weights_checkpoint().write(str(vdir / artifacts.CHECKPOINT / "model"))
        manifest = {
            **_manifest(model, version, items, similarity, index_info, popular),
            "metrics": metrics,
            "baseline_popular": baseline_popular,
            "data": data,
            "config": cfg.as_dict(),
            **(extra or {}),
        }
        artifacts.write_manifest(vdir, manifest)
        # A Ctrl-C whose exception TF swallowed while saving: the staged version is dropped.
        interrupts.check()
    log.info("exported version %s", version)
    if publish:
        artifacts.publish(art, version)
        log.info("published version %s", version)
    return version


def _fallback_items(item_ids: np.ndarray, item_counts: np.ndarray, n: int) -> list[str]:
    """The cold-start fallback list: the ``n`` most counted items (ties in index order),
    only those counted at all."""
    order = np.lexsort((np.arange(len(item_counts)), -item_counts))
    return [str(item_ids[i]) for i in order[:n] if item_counts[i] > 0]


def _manifest(
    model: TwoTowerModel,
    version: str,
    items: np.ndarray,
    similarity: str,
    index_info: dict[str, Any],
    popular: list[str],
) -> dict[str, Any]:
    """The manifest's description of the version's files (what was measured goes after)."""
    cfg = model.config
    return {
        "version": version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "embedding_dim": int(items.shape[1]),
        "num_items": int(items.shape[0]),
        "similarity": similarity,
        "history_length": cfg.model.history_length,
        "dislike_length": cfg.model.dislike_length,
        "user_tower": {
            "path": artifacts.USER_TOWER,
            "signature": SIGNATURE,
            "inputs": {
                "history": ["batch", cfg.model.history_length],
                "dislikes": ["batch", cfg.model.dislike_length],
            },
            "output": "embedding",
            "token": "item index + 1; 0 = padding; right-aligned, most recent last",
        },
        "items": {"path": artifacts.ITEMS},
        "index": {**index_info, "path": artifacts.INDEX},
        "popular_items": popular,
    }
