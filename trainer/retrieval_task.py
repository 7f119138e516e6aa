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

Cross-batch memory (``loss.memory_batches`` = K, off by default)
----------------------------------------------------------------
More negatives from the label distribution without a larger batch: the memory
keeps the ids of the positive rows' labels of the last K global batches (written
after each training step). Each step the model embeds them with the current item
tower, with gradient, like the mixed negatives, and they join C between the
batch's label slots and the M uniform extras, as slots like any other: another
copy of a positive row's label among them is an accidental hit, the NTR term's p
counts them, and with ``dedupe_candidates`` the first slot of an item wins. The
memory's slots are draws from the same distribution as the batch's labels, so
with f batches in the memory (f = K once K steps have run) an item is expected
``(1 + f) p_j`` times in C and every slot's correction, the label's too, uses
``q_j = clip((1 + f) p_j + M / N, 1e-6, 1)``; with ``dedupe_candidates``,
``1 - (1 - p_j)^(1 + f) (1 - 1/N)^M`` (the batches taken as independent draws).

Why ids, not vectors (the cross-batch negative sampling of Wang et al., SIGIR
2021, keeps the vectors as the item tower computed them then): a memory of
vectors gets no gradient, so every step the items receive the positives' pull in
full but only part of the negatives' push (the memory's slots take their share
of each row's softmax). On Gowalla that variant lost a third of validation
recall@20 after one epoch (K = 1: 0.118 against 0.180) although its vectors
were nearly current (cosine 0.999 to the item tower's output a step later).

The memory is part of the training checkpoint (a resumed run continues with the
same one) but not of an exported version: a warm start or a refit begins empty.
Under ``tf.distribute`` every replica writes the same gathered global batch and
embeds the same memory (as with the mixed negatives, each replica's gradient is
its own rows'); its blocks are ``train.batch_size`` rows.
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
      memory_batches: K, the global batches the cross-batch memory holds (module
        docstring); 0 = none.
      memory_rows: rows of a global batch (``train.batch_size``); with K > 0 every
        training call must gather exactly this many.
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
        memory_batches: int = 0,
        memory_rows: int = 0,
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
        self.memory: _Memory | None = None
        if memory_batches < 0:
            raise ValueError(f"loss.memory_batches must be >= 0, got {memory_batches}")
        if memory_batches > 0:
            if memory_rows < 1:
                raise ValueError(
                    f"loss.memory_batches={memory_batches} needs the global batch's rows "
                    f"(got memory_rows={memory_rows})"
                )
            self.memory = _Memory(int(memory_batches), int(memory_rows))

    def _log_q(self, ids: tf.Tensor, num_extra: tf.Tensor, draws: tf.Tensor) -> tf.Tensor:
        """float32 [n] log q for ids [n]; ``num_extra`` = M extras in the candidate set,
        ``draws`` = 1 + the batches in the cross-batch memory (float32 scalar)."""
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
            # P(j in C): in one of the batches' labels, or among M uniform draws.
            miss = tf.exp(m * tf.math.log1p(-1.0 / float(self.num_items)))
            q = 1.0 - tf.pow(1.0 - tf.clip_by_value(p, 0.0, 1.0), draws) * miss
        else:
            q = draws * p + m / float(self.num_items)
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
        memory_item_embeddings: tf.Tensor | None = None,
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
          memory_item_embeddings: [K * rows, d], the item tower's outputs for
            :meth:`memory_ids` read before this call (required iff
            ``memory_batches`` > 0); the same on every replica.
        """
        self._check_inputs(extra_item_embeddings, extra_ids, dislike_ids)
        if (memory_item_embeddings is None) != (self.memory is None):
            raise ValueError(
                f"loss.memory_batches={0 if self.memory is None else self.memory.batches} but "
                f"the memory's item vectors were {'not ' if memory_item_embeddings is None else ''}given"
            )
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
        memory = self.memory
        if memory is None or memory_item_embeddings is None:
            kept = _Slots(tf.zeros([0, tf.shape(item)[-1]], tf.float32), tf.zeros([0], tf.int64))
            draws = tf.constant(1.0)
        else:
            kept = _Slots(normalize(memory_item_embeddings), memory.ids.read_value())
            draws = 1.0 + tf.cast(memory.filled.read_value(), tf.float32)
        cand = _candidates(ctx, item, ids, positive, kept, extra, extra_ids)
        num_extra = tf.shape(extra_ids)[0]
        cand_logq = self._log_q(cand.ids, num_extra, draws)
        neg_item, neg_ids = dislike_negatives(
            dislike_item_embeddings, dislike_ids, tf.shape(ids)[0]
        )
        terms = row_terms(
            user,
            item,
            ids,
            self._log_q(ids, num_extra, draws),
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
        if memory is not None and training:
            memory.write(cand.batch_ids)
        local = term_sums(terms)
        global_ = (
            local
            if ctx is None
            else ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(local))
        )
        return loss_output(terms, local, global_, self.ntr_weight)

    def memory_ids(self) -> tf.Tensor | None:
        """int32 [K * rows] tokens the cross-batch memory holds (0 = empty), or None without one."""
        return None if self.memory is None else tf.cast(self.memory.ids.read_value(), tf.int32)

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
            "memory_batches": 0 if self.memory is None else self.memory.batches,
            "memory_rows": 0 if self.memory is None else self.memory.rows,
        }


def _extras(
    embeddings: tf.Tensor | None, ids: tf.Tensor | None, dim: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """(normalised [M, d], int64 [M]) of the mixed negatives; M = 0 when there are none."""
    if embeddings is None or ids is None:
        return tf.zeros([0, dim], tf.float32), tf.zeros([0], tf.int64)
    return normalize(embeddings), tf.reshape(tf.cast(ids, tf.int64), [-1])


class _Slots(NamedTuple):
    """Candidate slots of a kind: normalised vectors [n, d] and int64 ids [n] (0 = empty slot)."""

    item: tf.Tensor
    ids: tf.Tensor


class _Candidates(NamedTuple):
    item: tf.Tensor  # [K, d]
    ids: tf.Tensor  # int64 [K]
    valid: tf.Tensor  # bool [K]: a positive row's label slot, a filled memory slot, an extra
    own_slot: tf.Tensor  # bool [B, K]: each of this replica's rows' own slot
    batch_ids: tf.Tensor  # int64 [global B]: the batch's label ids, 0 on dislike rows


def _candidates(
    ctx: tf.distribute.ReplicaContext | None,
    item: tf.Tensor,
    ids: tf.Tensor,
    positive: tf.Tensor,
    memory: _Slots,
    extra: tf.Tensor,
    extra_ids: tf.Tensor,
) -> _Candidates:
    """C of the global batch: every replica's label slots, the memory's, then the M extras.

    The memory and the extras are already global (the same on every replica): never
    gathered. A row's own slot in the gathered candidates is found by its tag
    (replica, row).
    """
    replica = 0 if ctx is None else ctx.replica_id_in_sync_group
    own_tag = tf.cast(replica, tf.int64) * (1 << 32) + tf.range(
        tf.shape(ids, out_type=tf.int64)[0], dtype=tf.int64
    )
    g_item, g_ids, g_positive, g_tag = all_gather_rows(item, ids, positive, own_tag)
    others = tf.shape(memory.ids)[0] + tf.shape(extra_ids)[0]
    return _Candidates(
        item=tf.concat([g_item, memory.item, extra], axis=0),
        ids=tf.concat([g_ids, memory.ids, extra_ids], axis=0),
        valid=tf.concat(
            [g_positive, memory.ids > 0, tf.ones(tf.shape(extra_ids), tf.bool)], axis=0
        ),
        own_slot=tf.equal(
            own_tag[:, None],
            tf.concat([g_tag, tf.fill([others], tf.constant(-1, tf.int64))], axis=0)[None, :],
        ),
        batch_ids=tf.where(g_positive, g_ids, tf.zeros_like(g_ids)),
    )


class _Memory(tf.Module):
    """The cross-batch memory: a ring of ``batches`` blocks of ``rows`` label ids.

    Variables (``ONLY_FIRST_REPLICA``: every replica writes the same gathered batch):
    ``memory_ids`` int64 [batches * rows] (0 = an empty slot or a dislike row's),
    ``memory_next`` (the block the next batch overwrites) and ``memory_filled``
    (blocks written, at most ``batches``).
    """

    def __init__(self, batches: int, rows: int):
        super().__init__(name="cross_batch_memory")
        self.batches, self.rows = batches, rows
        with self.name_scope:
            self.ids = _state(tf.zeros([batches * rows], tf.int64), "memory_ids")
            self.next = _state(tf.constant(0, tf.int64), "memory_next")
            self.filled = _state(tf.constant(0, tf.int64), "memory_filled")

    def write(self, ids: tf.Tensor) -> None:
        """Overwrite the oldest block with the batch's label ``ids`` (exactly ``rows``)."""
        tf.debugging.assert_equal(
            tf.shape(ids)[0],
            self.rows,
            message=(
                "loss.memory_batches: a training step's global batch must have "
                "train.batch_size rows (batches are cut with drop_remainder)"
            ),
        )
        at = self.next.read_value() * self.rows + tf.range(self.rows, dtype=tf.int64)
        self.ids.scatter_update(tf.IndexedSlices(ids, at))
        self.next.assign(tf.math.floormod(self.next.read_value() + 1, self.batches))
        self.filled.assign(tf.minimum(self.filled.read_value() + 1, self.batches))


def _state(initial: tf.Tensor, name: str) -> tf.Variable:
    return tf.Variable(
        initial,
        trainable=False,
        name=name,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
    )
