"""The loss of LOSSES.md as one function of a single-device batch, for the tests.

:class:`trainer.retrieval_task.NTRRetrievalTask` is what trains; this is the same row terms
(:func:`trainer.losses.row_terms`) without a layer, an estimator or a strategy, so a test
can give the logQ values, the candidates and the options directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from trainer._tf import tf
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

LogQ: TypeAlias = Callable[[tf.Tensor], tf.Tensor] | tf.Tensor | None


def sampled_softmax_ntr(
    user: tf.Tensor,
    item: tf.Tensor,
    item_ids: tf.Tensor,
    is_positive: tf.Tensor,
    weight: tf.Tensor,
    log_q: LogQ,
    temperature: float,
    ntr_weight: float,
    extra_item: tf.Tensor | None = None,
    extra_ids: tf.Tensor | None = None,
    remove_accidental_hits: bool = True,
    dedupe_candidates: bool = False,
    dislike_item: tf.Tensor | None = None,
    dislike_ids: tf.Tensor | None = None,
    logq_label: LogQLabel = "corrected",
) -> LossOutput:
    """The loss of LOSSES.md on one (single-device) batch.

    Args:
      user: [B, d] user-tower outputs (normalised here).
      item: [B, d] item-tower outputs of each row's label item (normalised here).
      item_ids: int [B] label item ids (accidental hits are detected by id).
      is_positive: float [B], 1 = positive row, 0 = dislike row.
      weight: float [B], w_r of dislike rows (ignored on positive rows).
      log_q: log q_j, either a callable ids [K] -> float [K], or a float
        tensor [B + M] for ``concat(item_ids, extra_ids)``, or None (no
        correction).
      temperature: tau (> 0).
      ntr_weight: lambda.
      extra_item: [M, d] mixed-negative item outputs, or None.
      extra_ids: int [M] their ids, or None.
      remove_accidental_hits: drop other slots holding a positive row's label.
      dedupe_candidates: one candidate slot per distinct item (module
        docstring); ``log_q`` must then be log P(item in C).
      dislike_item: [B, N, d] item-tower outputs of each row's dislike
        negatives, or None (module docstring: extra candidates of positive rows,
        log q = 0).
      dislike_ids: int [B, N] their ids, 0 = padding, or None.
      logq_label: ``corrected`` (LOSSES.md: the row's label logit is corrected like
        every slot) or ``exact`` (no -log q on the row's own label; module docstring).

    Returns:
      :class:`LossOutput` of the batch.
    """
    check_logq_label(logq_label)
    ids = tf.reshape(tf.cast(item_ids, tf.int64), [-1])
    user, item = normalize(user), normalize(item)
    is_positive = tf.reshape(tf.cast(is_positive, tf.float32), [-1])
    weight = tf.reshape(tf.cast(weight, tf.float32), [-1])
    rows = tf.shape(ids)[0]
    if (extra_item is None) != (extra_ids is None):
        raise ValueError("extra_item and extra_ids must be given together")
    if extra_item is None:
        extra_item = tf.zeros([0, item.shape[-1] or tf.shape(item)[-1]], tf.float32)
        extra_ids = tf.zeros([0], tf.int64)
    extra_item = normalize(extra_item)
    extra_ids = tf.reshape(tf.cast(extra_ids, tf.int64), [-1])
    all_ids = tf.concat([ids, extra_ids], axis=0)
    row_logq, extra_logq = _log_q_for(log_q, all_ids, rows)
    neg_item, neg_ids = dislike_negatives(dislike_item, dislike_ids, rows)
    # Slot k < B is row k's own label slot; the extras follow.
    own_slot = tf.equal(
        tf.range(rows, dtype=tf.int64)[:, None],
        tf.range(tf.shape(all_ids, out_type=tf.int64)[0], dtype=tf.int64)[None, :],
    )
    terms = row_terms(
        user,
        item,
        ids,
        row_logq,
        is_positive,
        weight,
        cand_item=tf.concat([item, extra_item], axis=0),
        cand_ids=all_ids,
        cand_logq=tf.concat([row_logq, extra_logq], axis=0),
        cand_valid=tf.concat([is_positive > 0.5, tf.ones(tf.shape(extra_ids), tf.bool)], axis=0),
        temperature=temperature,
        remove_accidental_hits=remove_accidental_hits,
        dedupe=dedupe_candidates,
        neg_item=neg_item,
        neg_ids=neg_ids,
        exact_label=logq_label == "exact",
        own_slot=own_slot,
    )
    sums = term_sums(terms)
    return loss_output(terms, sums, sums, ntr_weight)


def _log_q_for(log_q: LogQ, ids: tf.Tensor, rows: int | tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(log q of the rows [B], log q of the extras [M]) for ids [B + M]."""
    if log_q is None:
        values = tf.zeros(tf.shape(ids), tf.float32)
    elif callable(log_q):
        values = tf.cast(log_q(ids), tf.float32)
    else:
        values = tf.reshape(tf.cast(log_q, tf.float32), [-1])
        tf.debugging.assert_equal(
            tf.shape(values),
            tf.shape(ids),
            message="log_q tensor must have one value per row then per extra item",
        )
    return values[:rows], values[rows:]
