"""The TFRS model: two towers + the streaming-logQ sampled softmax with the NTR term."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tensorflow_recommenders as tfrs

from trainer._tf import keras, tf
from trainer.config import TrainerConfig
from trainer.frequency import StreamingFrequencyEstimator
from trainer.retrieval_task import NTRRetrievalTask
from trainer.towers import ItemTower, UserTower


class TwoTowerModel(tfrs.Model):
    """Sequential user tower x item tower, trained with :class:`NTRRetrievalTask`.

    Features (a dict of tensors, one row per event):
      history: int32 [B, H] tokens, right-aligned.
      dislikes: int32 [B, D] tokens, right-aligned.
      item: int32 [B] token of the target item.
      is_positive: float32 [B], 1 = softmax target, 0 = NTR (dislike) target.
      weight: float32 [B].

    ``item_graph`` (int [N, >= K], ``-1`` padded): the items' co-occurrence
    neighbours for ``model.item_graph_neighbors`` = K > 0 (see :class:`ItemTower`).
    """

    def __init__(
        self,
        config: TrainerConfig,
        num_items: int,
        item_features: Mapping[str, np.ndarray] | None = None,
        feature_sizes: Mapping[str, int] | None = None,
        item_probabilities: np.ndarray | None = None,
        item_graph: np.ndarray | None = None,
    ):
        super().__init__()
        self.config = config
        self.num_items = num_items
        self.item_tower = ItemTower(
            num_items, config.model, item_features, feature_sizes, item_graph=item_graph
        )
        self.user_tower = UserTower(self.item_tower.id_embedding, config.model, self.item_tower)
        freq = config.frequency
        self.estimator = (
            StreamingFrequencyEstimator(
                buckets=freq.buckets,
                hashes=freq.hashes,
                alpha=freq.alpha,
                initial_gap=freq.initial_gap,
                seed=config.train.seed,
            )
            if config.loss.logq == "streaming"
            else None
        )
        self.task = NTRRetrievalTask(
            num_items=num_items,
            temperature=config.loss.temperature,
            ntr_weight=config.loss.ntr_weight,
            logq=config.loss.logq,
            estimator=self.estimator,
            item_probabilities=item_probabilities,
            mixed_negatives=config.loss.mixed_negatives,
            remove_accidental_hits=config.loss.remove_accidental_hits,
            dedupe_candidates=config.loss.dedupe_candidates,
            dislike_negatives=config.loss.dislike_negatives,
            logq_label=config.loss.logq_label,
            memory_batches=config.loss.memory_batches,
            memory_rows=config.train.batch_size,
        )
        self.ssm_tracker = keras.metrics.Mean(name="ssm")
        self.ntr_tracker = keras.metrics.Mean(name="ntr")

    def build_all(self) -> None:
        """Create every variable (so checkpoints can be restored before training)."""
        h = self.config.model.history_length
        d = self.config.model.dislike_length
        self.user_tower((tf.zeros([1, h], tf.int32), tf.zeros([1, d], tf.int32)))
        self.item_tower(tf.ones([1], tf.int32))

    def mixed_negative_ids(self, step: tf.Tensor | int) -> tf.Tensor:
        """int32 [M] tokens of the global batch ``step``'s mixed negatives.

        M = ``loss.mixed_negatives`` tokens drawn uniformly from 1..N with
        replacement by a *stateless* RNG keyed on (``train.seed``, ``step``): the
        same draw on every replica and worker, and again after a resume, with
        no RNG state to checkpoint.
        """
        m = self.config.loss.mixed_negatives
        key = tf.stack([tf.constant(self.config.train.seed, tf.int64), tf.cast(step, tf.int64)])
        return tf.random.stateless_uniform(
            [m], seed=key, minval=1, maxval=self.num_items + 1, dtype=tf.int32
        )

    def compute_loss(
        self,
        features: Mapping[str, tf.Tensor],
        training: bool = False,
        step: tf.Tensor | int | None = None,
    ) -> tf.Tensor:
        """The loss of one (per-replica) batch.

        Args:
          features: the batch (keys in the class docstring).
          training: update the streaming estimator and run dropout.
          step: int scalar, the global step of this batch; keys the mixed
            negatives' draw (:meth:`mixed_negative_ids`). Required when
            ``loss.mixed_negatives`` > 0.
        """
        user = self.user_tower((features["history"], features["dislikes"]), training=training)
        item = self.item_tower(features["item"], training=training)
        extra_ids = extra = None
        if self.config.loss.mixed_negatives > 0:
            if step is None:
                raise ValueError(
                    "loss.mixed_negatives > 0: compute_loss needs the global step that keys "
                    "the draw of the mixed negatives (step=...)"
                )
            extra_ids = self.mixed_negative_ids(step)
            extra = self.item_tower(extra_ids, training=training)
        dislike_ids = dislikes = None
        n = self.config.loss.dislike_negatives
        if n > 0:
            # The row's N most recent dislikes before t (right-aligned, 0 = padding).
            dislike_ids = features["dislikes"][:, -n:]
            dislikes = self.item_tower(dislike_ids, training=training)
        memory_ids = self.task.memory_ids()
        memory = None if memory_ids is None else self.item_tower(memory_ids, training=training)
        out = self.task(
            user,
            item,
            features["item"],
            features["is_positive"],
            features["weight"],
            extra_item_embeddings=extra,
            extra_ids=extra_ids,
            training=training,
            dislike_item_embeddings=dislikes,
            dislike_ids=dislike_ids,
            memory_item_embeddings=memory,
        )
        self.ssm_tracker.update_state(out.ssm_mean)
        self.ntr_tracker.update_state(out.ntr_mean)
        return out.total

    def weights_checkpoint(self) -> tf.train.Checkpoint:
        """A checkpoint of what a version keeps: the towers and the estimator state.

        Same object paths as ``tf.train.Checkpoint(model=self)`` (so warm starts
        read it into a whole model), without the loss trackers: those are
        sync-on-read variables, and reading them is a collective that only the
        chief of a multi-worker run would join when it exports.
        """
        weights = tf.Module()
        weights.item_tower = self.item_tower
        weights.user_tower = self.user_tower
        if self.estimator is not None:
            weights.estimator = self.estimator
        return tf.train.Checkpoint(model=weights)

    # ---- inference helpers (numpy in, numpy out), used by evaluation and export ----

    def embed_users(
        self, history: np.ndarray, dislikes: np.ndarray, batch_size: int = 4096
    ) -> np.ndarray:
        """float32 [u, dim] raw user embeddings for token arrays [u, H], [u, D]."""
        out = []
        for start in range(0, len(history), batch_size):
            out.append(
                self._embed_users(
                    tf.constant(history[start : start + batch_size], tf.int32),
                    tf.constant(dislikes[start : start + batch_size], tf.int32),
                ).numpy()
            )
        dim = self.config.model.embedding_dim
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)

    def embed_items(self, batch_size: int = 65536) -> np.ndarray:
        """float32 [N, dim] raw embeddings of every item, in index order."""
        out = []
        for start in range(1, self.num_items + 1, batch_size):
            tokens = tf.range(start, min(start + batch_size, self.num_items + 1), dtype=tf.int32)
            out.append(self._embed_items(tokens).numpy())
        return np.concatenate(out).astype(np.float32)

    @tf.function(reduce_retracing=True)
    def _embed_users(self, history: tf.Tensor, dislikes: tf.Tensor) -> tf.Tensor:
        return self.user_tower((history, dislikes), training=False)

    @tf.function(reduce_retracing=True)
    def _embed_items(self, tokens: tf.Tensor) -> tf.Tensor:
        return self.item_tower(tokens, training=False)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation, safe for zero rows."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
