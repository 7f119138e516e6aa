"""The retrieval task: the Keras layer that trains with the loss of :mod:`trainer.losses`.

:mod:`trainer.losses` computes the terms of a set of rows against a given set of
candidate slots; this layer says what those are in training: the candidate set C (the
batch's positive rows' label items plus ``loss.mixed_negatives`` uniform extras), each
slot's log q (``loss.logq``: the streaming estimate of :mod:`trainer.frequency`, fixed
per-batch counts, or none; ``q_j = clip(p_j + M / N, 1e-6, 1)``, or with
``loss.dedupe_candidates`` the probability that j is in C), the rows' dislike negatives,
and how replicas combine.

Under ``tf.distribute`` (:class:`NTRRetrievalTask` inside ``strategy.run``)
the in-batch candidate slots are all-gathered from every replica, so a
replica's rows see the global batch's candidate set, and the per-replica
``total`` is this replica's *sum* of terms divided by the *global* row
counts: summing ``total`` (or the gradients) over replicas gives the
single-device value. The M mixed negatives are drawn once per *global*
batch: every replica receives the same M items (the model draws them from a
stateless RNG keyed on (``train.seed``, global step), see
:meth:`trainer.model.TwoTowerModel.mixed_negative_ids`), so they are not
gathered, the candidate set holds M extras whatever the replica count, and a
resumed run draws the same ones.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import numpy as np

from trainer._tf import keras, tf
from trainer.frequency import (
    StreamingFrequencyEstimator,
    all_gather_rows,
    replica_context_to_gather,
)
from trainer.losses import (
    LogQLabel,
    LossOutput,
    check_logq_label,
    dislike_negatives,
    loss_output,
    normalize,
    row_terms,
    term_sums,
)

_Q_MIN, _Q_MAX = 1e-6, 1.0


class NTRRetrievalTask(keras.layers.Layer):
    """The retrieval task: holds the loss (and the logQ source) and nothing else.

    Args:
      num_items: N, catalog size; item ids are tokens 1..N (0 = padding).
      temperature: tau.
      ntr_weight: lambda of the NTR term.
      logq: ``streaming`` (``estimator`` updated with each training batch's
        distinct positive ids, read after that update), ``counts`` (fixed
        ``item_probabilities``) or ``none`` (no correction).
      estimator: required for ``streaming``; create it under the strategy's scope.
      item_probabilities: for ``counts``, float [N + 1] expected occurrences
        of each token per batch (index 0 = padding, unused).
      mixed_negatives: M uniform extra items each call receives (0 = none);
        under a strategy every replica receives the same M (one draw per
        global batch).
      remove_accidental_hits: drop the other candidate slots holding a positive row's label.
      dedupe_candidates: one slot per distinct item in C, q = P(item in C)
        (:mod:`trainer.losses`).
      dislike_negatives: N, the user's most recent dislikes each positive row
        receives as extra candidates (log q = 0; :mod:`trainer.losses`); 0 = none.
      logq_label: ``corrected`` (LOSSES.md: the row's label logit is corrected like
        every slot) or ``exact`` (no -log q on the row's own label; :mod:`trainer.losses`).
    """

    def __init__(
        self,
        num_items: int,
        temperature: float,
        ntr_weight: float,
        logq: Literal["streaming", "counts", "none"] = "streaming",
        estimator: StreamingFrequencyEstimator | None = None,
        item_probabilities: np.ndarray | None = None,
        mixed_negatives: int = 0,
        remove_accidental_hits: bool = True,
        dedupe_candidates: bool = False,
        dislike_negatives: int = 0,
        logq_label: LogQLabel = "corrected",
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_logq_label(logq_label)
        if logq not in ("streaming", "counts", "none"):
            raise ValueError(f"loss.logq must be 'streaming', 'counts' or 'none', got {logq!r}")
        if temperature <= 0.0:
            raise ValueError(f"loss.temperature must be > 0, got {temperature}")
        if mixed_negatives < 0:
            raise ValueError(f"loss.mixed_negatives must be >= 0, got {mixed_negatives}")
        if dislike_negatives < 0:
            raise ValueError(f"loss.dislike_negatives must be >= 0, got {dislike_negatives}")
        if logq == "streaming" and estimator is None:
            raise ValueError(
                "loss.logq='streaming' needs a StreamingFrequencyEstimator (estimator=None)"
            )
        self.probability_table: tf.Tensor | None = None
        if logq == "counts":
            if item_probabilities is None:
                raise ValueError(
                    "loss.logq='counts' needs item_probabilities (float [num_items + 1])"
                )
            table = np.asarray(item_probabilities, np.float32).reshape(-1)
            if table.shape[0] != num_items + 1:
                raise ValueError(
                    f"item_probabilities has {table.shape[0]} entries; expected num_items + 1 = {num_items + 1} "
                    "(indexed by token, entry 0 = padding)"
                )
            self.probability_table = tf.constant(table)
        self.num_items = int(num_items)
        self.temperature = float(temperature)
        self.ntr_weight = float(ntr_weight)
        self.logq = logq
        self.estimator = estimator
        self.mixed_negatives = int(mixed_negatives)
        self.remove_accidental_hits = bool(remove_accidental_hits)
        self.dedupe_candidates = bool(dedupe_candidates)
        self.dislike_negatives = int(dislike_negatives)
        self.logq_label: LogQLabel = logq_label

    def _log_q(self, ids: tf.Tensor, num_extra: tf.Tensor) -> tf.Tensor:
        """float32 [n] log q for ids [n]; ``num_extra`` = M extras in the candidate set."""
        if self.logq == "none":
            return tf.zeros(tf.shape(ids), tf.float32)
        if self.logq == "counts":
            assert self.probability_table is not None
            p = tf.gather(self.probability_table, ids)
        else:
            assert self.estimator is not None
            p = self.estimator.probability(ids)
        m = tf.cast(num_extra, tf.float32)
        if self.dedupe_candidates:
            # P(j in C): in the batch's labels, or among M uniform draws.
            miss = tf.exp(m * tf.math.log1p(-1.0 / float(self.num_items)))
            q = 1.0 - (1.0 - tf.clip_by_value(p, 0.0, 1.0)) * miss
        else:
            q = p + m / float(self.num_items)
        return tf.math.log(tf.clip_by_value(q, _Q_MIN, _Q_MAX))

    def call(
        self,
        user_embeddings: tf.Tensor,
        item_embeddings: tf.Tensor,
        item_ids: tf.Tensor,
        is_positive: tf.Tensor,
        weight: tf.Tensor,
        extra_item_embeddings: tf.Tensor | None = None,
        extra_ids: tf.Tensor | None = None,
        training: bool = True,
        dislike_item_embeddings: tf.Tensor | None = None,
        dislike_ids: tf.Tensor | None = None,
    ) -> LossOutput:
        """Loss of this replica's rows against the global batch's candidates.

        Args:
          user_embeddings: [B, d]; item_embeddings: [B, d] of each row's label.
          item_ids: int [B] tokens; is_positive: float [B] 1/0; weight: float [B].
          extra_item_embeddings: [M, d] and extra_ids: int [M] tokens of the
            mixed negatives (required iff ``mixed_negatives`` > 0); the same M
            items on every replica.
          training: when true and logq is ``streaming``, the estimator takes
            one step with this batch first.
          dislike_item_embeddings: [B, N, d] and dislike_ids: int [B, N] tokens
            (0 = padding) of each row's N most recent dislikes (required iff
            ``dislike_negatives`` > 0); per row, never gathered across replicas.
        """
        self._check_inputs(extra_item_embeddings, extra_ids, dislike_ids)
        ids = tf.reshape(tf.cast(item_ids, tf.int64), [-1])
        is_positive = tf.reshape(tf.cast(is_positive, tf.float32), [-1])
        weight = tf.reshape(tf.cast(weight, tf.float32), [-1])
        positive = is_positive > 0.5
        user, item = normalize(user_embeddings), normalize(item_embeddings)
        extra, extra_ids = _extras(extra_item_embeddings, extra_ids, tf.shape(item)[-1])

        if self.logq == "streaming" and training:
            assert self.estimator is not None
            self.estimator.update(ids, mask=positive)

        ctx = replica_context_to_gather()
        cand = _candidates(ctx, item, ids, positive, extra, extra_ids)
        num_extra = tf.shape(extra_ids)[0]
        cand_logq = self._log_q(cand.ids, num_extra)
        neg_item, neg_ids = dislike_negatives(
            dislike_item_embeddings, dislike_ids, tf.shape(ids)[0]
        )
        terms = row_terms(
            user,
            item,
            ids,
            self._log_q(ids, num_extra),
            is_positive,
            weight,
            cand_item=cand.item,
            cand_ids=cand.ids,
            cand_logq=cand_logq,
            cand_valid=cand.valid,
            temperature=self.temperature,
            remove_accidental_hits=self.remove_accidental_hits,
            dedupe=self.dedupe_candidates,
            neg_item=neg_item,
            neg_ids=neg_ids,
            exact_label=self.logq_label == "exact",
            own_slot=cand.own_slot,
        )
        local = term_sums(terms)
        global_ = (
            local
            if ctx is None
            else ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(local))
        )
        return loss_output(terms, local, global_, self.ntr_weight)

    def _check_inputs(
        self,
        extra_item_embeddings: tf.Tensor | None,
        extra_ids: tf.Tensor | None,
        dislike_ids: tf.Tensor | None,
    ) -> None:
        """The optional inputs :meth:`call` was given agree with the configuration."""
        if (extra_item_embeddings is None) != (extra_ids is None):
            raise ValueError("extra_item_embeddings and extra_ids must be given together")
        if (extra_ids is None) != (self.mixed_negatives == 0):
            raise ValueError(
                f"loss.mixed_negatives={self.mixed_negatives} but extra items were "
                f"{'not ' if extra_ids is None else ''}given"
            )
        if (dislike_ids is None) != (self.dislike_negatives == 0):
            raise ValueError(
                f"loss.dislike_negatives={self.dislike_negatives} but dislike negatives were "
                f"{'not ' if dislike_ids is None else ''}given"
            )

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "num_items": self.num_items,
            "temperature": self.temperature,
            "ntr_weight": self.ntr_weight,
            "logq": self.logq,
            "mixed_negatives": self.mixed_negatives,
            "remove_accidental_hits": self.remove_accidental_hits,
            "dedupe_candidates": self.dedupe_candidates,
            "dislike_negatives": self.dislike_negatives,
            "logq_label": self.logq_label,
        }


def _extras(
    embeddings: tf.Tensor | None, ids: tf.Tensor | None, dim: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(normalised [M, d], int64 [M]) of the mixed negatives; M = 0 when there are none."""
    if embeddings is None or ids is None:
        return tf.zeros([0, dim], tf.float32), tf.zeros([0], tf.int64)
    return normalize(embeddings), tf.reshape(tf.cast(ids, tf.int64), [-1])


class _Candidates(NamedTuple):
    item: tf.Tensor  # [K, d]
    ids: tf.Tensor  # int64 [K]
    valid: tf.Tensor  # bool [K]: a positive row's label slot, or an extra
    own_slot: tf.Tensor  # bool [B, K]: each of this replica's rows' own slot


def _candidates(
    ctx: tf.distribute.ReplicaContext | None,
    item: tf.Tensor,
    ids: tf.Tensor,
    positive: tf.Tensor,
    extra: tf.Tensor,
    extra_ids: tf.Tensor,
) -> _Candidates:
    """C of the global batch: every replica's label slots, then the M extras.

    The extras are already global (the same M on every replica): never gathered. A
    row's own slot in the gathered candidates is found by its tag (replica, row).
    """
    replica = 0 if ctx is None else ctx.replica_id_in_sync_group
    own_tag = tf.cast(replica, tf.int64) * (1 << 32) + tf.range(
        tf.shape(ids, out_type=tf.int64)[0], dtype=tf.int64
    )
    g_item, g_ids, g_positive, g_tag = all_gather_rows(item, ids, positive, own_tag)
    num_extra = tf.shape(extra_ids)[0]
    return _Candidates(
        item=tf.concat([g_item, extra], axis=0),
        ids=tf.concat([g_ids, extra_ids], axis=0),
        valid=tf.concat([g_positive, tf.ones([num_extra], tf.bool)], axis=0),
        own_slot=tf.equal(
            own_tag[:, None],
            tf.concat([g_tag, tf.fill([num_extra], tf.constant(-1, tf.int64))], axis=0)[None, :],
        ),
    )
