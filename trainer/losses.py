"""Sampled softmax with logQ correction over positives + not-to-recommend (NTR) over dislikes.

The convention is docs/LOSSES.md, restated in terms of one helper quantity. For a row r with own
logit ``z_r = u_r . v_r / tau - log q_r`` (its label item, positive or
disliked) let ``o_r = logsumexp_{j in C, id_j != id_r} z_rj`` be the
log-partition over the candidate slots holding *another* item. Then

* positive row, accidental hits removed (C_r = C minus other copies of y_r,
  own slot kept): ``loss_r = logaddexp(o_r, z_r) - z_r = softplus(o_r - z_r)``;
  without hit removal ``loss_r = logsumexp_{j in C} z_rj - z_r``;
* dislike row of item d: ``p = sigmoid(z_r - o_r)`` and
  ``ntr_r = -w_r log(1 - p) = w_r softplus(z_r - o_r)``, which is finite for
  p -> 0 and p -> 1. A dislike row with no other item in C contributes 0 and
  is counted in ``num_dislike_without_candidates`` (and in the mean's count).

``L = mean_pos loss_r + lambda * mean_dislike ntr_r``; an empty group
contributes 0. Candidate slots are the batch's positive rows' label items
plus M uniform extras; dislike rows' items are never candidates for other rows
(a user's own past dislikes can be, for that user's positive rows only: dislike
negatives, below).
``q_j = clip(p_j + M / N, 1e-6, 1)``. Only dislike rows are weighted, as in
LOSSES.md (positives have w = 1).

Deduplicated candidates (``loss.dedupe_candidates``, off by default)
--------------------------------------------------------------------
LOSSES.md keeps every copy of a head item in C (a row's own label copies
excepted), so an item occurring k times in the batch enters every partition
function k times, while its correction ``-log q`` uses the streaming
estimate of P(the item occurs in a step) -- the estimator counts one hit per
step, however many copies. With ``dedupe_candidates`` the convention is made
consistent the other way: C holds **one slot per distinct item** (the first
valid slot of each id; positive labels first, then extras), and q_j is the
probability that j is in C, ``q_j = clip(1 - (1 - p_j)(1 - 1/N)^M, 1e-6, 1)``
-- exactly what the estimator measures when M = 0 (``counts`` then supplies
``1 - (1 - c_j / rows)^B``). Every formula above holds with this C (the own
slot of a positive row is its label item, once; accidental hits cannot
occur). Batches without repeated items give identical numbers under both
conventions, so the LOSSES.md worked example holds for either.

Measured on validation (``python -m bench.tune --suite ml100k_dedupe`` and
``gowalla_dedupe``): ml-100k recall@20 0.2978 -> 0.2833 (mean of 3 seeds;
spread 0.004 -> 0.012) with dislike_rate@20 0.059 -> 0.051; Gowalla (3
epochs) 0.1987 -> 0.2000, within seed noise. With 1,682 items and batches of
1,024, a head item has many copies per batch; counting them once takes most
of the negative pressure off head items, and recall drops. So the default
stays LOSSES.md's convention.

Dislike negatives (``loss.dislike_negatives`` = N, off by default)
-----------------------------------------------------------------
The NTR term pushes a disliked item down only relative to C; with N > 0 the
sampled softmax itself also treats negative feedback as negatives. A
*positive* row r with dislike input ``d_r`` (tokens, most recent last, 0 =
padding; the user's dislikes strictly before t) gets the last N slots of
``d_r`` as extra candidates of its own, ``D_r``:

* ``z_rk = u_r . v_k / tau`` -- **no logQ correction** (log q = 0). The -log q
  of C corrects for items being Monte Carlo samples of the full softmax's
  denominator, included with probability q per step. A row's dislike
  negatives are not sampled: they are chosen for the row and in its
  candidate set with probability 1, so q = 1 (equivalently: importance
  weight 1). They are known negatives added to the partition function.
* padding slots are masked out; a slot holding the row's own label y_r (a
  user who disliked y, then liked it: the label is the later word) is
  removed, whatever ``remove_accidental_hits`` says;
* with the removals, ``o_r = logsumexp`` over C's other-item slots *and*
  ``D_r``; ``loss_r = softplus(o_r - z_r)`` as above (without hit removal
  ``loss_r = logsumexp_{C ∪ D_r} - z_r``). A row whose only other
  candidates are dislike negatives has a loss;
* every slot counts (an item also in C enters twice: once corrected as an
  in-batch sample, once as the row's known negative), as LOSSES.md keeps
  every copy. With ``dedupe_candidates``, C_r = distinct(C ∪ D_r): a repeated
  dislike counts once, and C's slots of an item in D_r are dropped for that
  row (its q for the row is 1, the D_r slot stays, uncorrected);
* dislike rows get no extras (their NTR term is as above), the row counts
  and means are unchanged, and under ``tf.distribute`` the extras are
  per-row and local: nothing is gathered for them.

Worked example (LOSSES.md's, N = 2; ``tests/trainer/test_losses.py``): row 0
(positive, item 10) has dislike input [0, 12], row 1 (positive, item 11)
[12, 11], row 2 (the dislike of 12) [10, 11]. Row 0 gets 12 (the 0 is
padding): z = 0.6 / 0.5 = 1.2 beside C's 10 (2.293147) and 11 (1.386294),
loss_0 = 0.339178 -> 0.553283. Row 1 gets 12 (z = 1.0 / 0.5 = 2.0), its 11
is its own label and is dropped: loss_1 = 0.523878 -> 0.723444. Row 2 gets
nothing: ntr_2 = 0.862204 as before. L = 0.638363 + 0.5 * 0.862204 = 1.069465.

The label's correction (``loss.logq_label``, ``corrected`` by default)
----------------------------------------------------------------------
``corrected`` is LOSSES.md (Yi et al. 2019): every logit, the row's own
label's included, is ``s - log q`` with ``s = u . v / tau``. ``exact`` follows
Khrylchenko et al., "Correcting the LogQ Correction" (RecSys 2025): the
full-softmax gradient of a positive row is
``-(1 - P_y) grad s_y + sum_{j != y} P_j grad s_j = (1 - P_y) (-grad s_y +
E_{j ~ P(. | j != y)} grad s_j)``. Only the expectation over the *other*
items is estimated from C; the label is in the row's partition with
probability 1, it is not a Monte Carlo sample, so its logit is not
corrected. Self-normalised importance sampling over C (weights ``exp(s_j -
log q_j)``) gives the loss ``softplus(o_r - s_r)`` with ``o_r`` as above
(the other items' corrected logits) and the label's logit ``s_r`` =
``u_r . v_r / tau`` **without** -log q: its gradient is ``(1 - P^_y)(-grad s_y +
the estimate)``, where ``P^_y = sigmoid(s_r - o_r)`` estimates P_y, the
paper's sample weight (the model's probability of missing the label). The
same holds wherever the row's own label enters its partition: the NTR
term's ``p = sigmoid(s_r - o_r)`` of a dislike row, and, without accidental
hit removal, the own slot (the label's *other* copies in C stay samples
and keep -log q). The candidates' logits, dislike negatives (log q = 0)
and deduplication are unchanged. On LOSSES.md's worked example:
loss_0 = 0.591992, loss_1 = 1.322890, ntr_2 = 0.128250 (p = 0.120367),
L = 0.957441 + 0.5 * 0.128250 = 1.021566 (``tests/trainer/test_losses.py``).

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

from typing import Literal, NamedTuple, TypeAlias

import numpy as np

from trainer._tf import keras, tf
from trainer.frequency import (
    StreamingFrequencyEstimator,
    all_gather_rows,
    replica_context_to_gather,
)

#: Masked logits: far below any real logit (|z| <= 1/tau + 14), finite so gradients stay finite.
_MASKED = -1e9
_Q_MIN, _Q_MAX = 1e-6, 1.0

LogQLabel: TypeAlias = Literal["corrected", "exact"]


def _check_logq_label(value: str) -> None:
    if value not in ("corrected", "exact"):
        raise ValueError(f"loss.logq_label must be 'corrected' or 'exact', got {value!r}")


class LossOutput(NamedTuple):
    """Loss and its parts (scalars).

    total: L, what to differentiate. Inside ``strategy.run``: this replica's
      share (sum over replicas = L of the global batch).
    ssm_mean: mean sampled-softmax loss over positive rows (global batch).
    ntr_mean: mean NTR term over dislike rows (global batch).
    num_positive, num_dislike, num_dislike_without_candidates: float32 row
      counts of the (global) batch.
    ssm_rows: [B] loss_r of this batch's (replica's) rows, 0 on dislike rows.
    ntr_rows: [B] ntr_r of this batch's (replica's) rows, 0 on positive rows.
    """

    total: tf.Tensor
    ssm_mean: tf.Tensor
    ntr_mean: tf.Tensor
    num_positive: tf.Tensor
    num_dislike: tf.Tensor
    num_dislike_without_candidates: tf.Tensor
    ssm_rows: tf.Tensor
    ntr_rows: tf.Tensor


class _RowTerms(NamedTuple):
    ssm: tf.Tensor  # [B] loss_r on positive rows, 0 elsewhere
    ntr: tf.Tensor  # [B] ntr_r on dislike rows, 0 elsewhere
    positive: tf.Tensor  # [B] float 1/0
    dislike: tf.Tensor  # [B] float 1/0
    no_candidates: tf.Tensor  # [B] float 1/0: dislike row without another item in C


def _normalize(x: tf.Tensor) -> tf.Tensor:
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def _row_terms(
    user: tf.Tensor,
    own_item: tf.Tensor,
    own_ids: tf.Tensor,
    own_logq: tf.Tensor,
    is_positive: tf.Tensor,
    weight: tf.Tensor,
    cand_item: tf.Tensor,
    cand_ids: tf.Tensor,
    cand_logq: tf.Tensor,
    cand_valid: tf.Tensor,
    temperature: float,
    remove_accidental_hits: bool,
    dedupe: bool = False,
    neg_item: tf.Tensor | None = None,
    neg_ids: tf.Tensor | None = None,
    exact_label: bool = False,
    own_slot: tf.Tensor | None = None,
) -> _RowTerms:
    """Per-row terms for rows [B] against candidate slots [K] (all inputs normalised).

    ``own_*`` describe each row's label item; the candidate slots include the
    positive rows' own slots (their own logits equal the own logit). ``dedupe``
    keeps only the first valid slot of each item id. ``neg_item`` [B, N, d] and
    ``neg_ids`` [B, N] (0 = padding) are each row's dislike negatives: extra
    candidates of that (positive) row only, with log q = 0 (module docstring).
    ``exact_label``: the row's own label logit carries no -log q (``loss.logq_label``
    = ``exact``); ``own_slot`` bool [B, K] marks each positive row's own slot (needed
    then without hit removal, where the other copies of the label stay samples).
    """
    positive = is_positive > 0.5
    dislike = tf.logical_not(positive)
    if dedupe:
        cand_valid = _first_valid_slots(cand_ids, cand_valid)
    own_s = tf.reduce_sum(user * own_item, axis=-1) / temperature  # [B]
    own_z = own_s - own_logq  # [B], the label as a sample of C
    label_z = own_s if exact_label else own_z  # [B], the label's logit in its own partition
    z = tf.matmul(user, cand_item, transpose_b=True) / temperature - cand_logq[None, :]  # [B, K]
    same = tf.equal(own_ids[:, None], cand_ids[None, :])  # [B, K]
    other = tf.logical_and(cand_valid[None, :], tf.logical_not(same))
    if neg_item is None or neg_ids is None:
        zn = tf.zeros([tf.shape(z)[0], 0], tf.float32)
        neg_valid = tf.zeros([tf.shape(z)[0], 0], tf.bool)
    else:
        # Dislike negatives: not padding, not the row's own label, positive rows only.
        neg_valid = (
            (neg_ids > 0) & tf.not_equal(neg_ids, own_ids[:, None]) & positive[:, None]
        )  # [B, N]
        if dedupe:
            # One slot per item: a repeated dislike counts once, and an item among the
            # row's dislike negatives leaves C for this row (it is in C_r for sure, q = 1).
            neg_valid = _first_valid_in_rows(neg_ids, neg_valid)
            in_negs = tf.reduce_any(
                tf.equal(cand_ids[None, :, None], neg_ids[:, None, :]) & neg_valid[:, None, :],
                axis=2,
            )  # [B, K]
            other = other & tf.logical_not(in_negs)
        zn = tf.einsum("bd,bnd->bn", user, neg_item) / temperature  # [B, N], log q = 0
    has_other = tf.reduce_any(other, axis=1) | tf.reduce_any(neg_valid, axis=1)
    lse_other = tf.reduce_logsumexp(
        tf.concat([tf.where(other, z, _MASKED), tf.where(neg_valid, zn, _MASKED)], axis=1), axis=1
    )  # [B]

    if remove_accidental_hits or dedupe:
        # Deduplicated: the row's label is in C once, as its own slot (no other copies).
        ssm = tf.nn.softplus(tf.where(has_other, lse_other - label_z, _MASKED))
    elif exact_label:
        # The own slot holds the label, uncorrected; other copies of it stay samples.
        if own_slot is None:
            raise ValueError("exact_label without hit removal needs own_slot")
        lse_all = tf.reduce_logsumexp(
            tf.concat(
                [
                    label_z[:, None],
                    tf.where(cand_valid[None, :] & tf.logical_not(own_slot), z, _MASKED),
                    tf.where(neg_valid, zn, _MASKED),
                ],
                axis=1,
            ),
            axis=1,
        )
        ssm = lse_all - label_z
    else:
        # Every candidate slot, own slot included (a positive row's own slot is a candidate).
        lse_all = tf.reduce_logsumexp(
            tf.concat(
                [tf.where(cand_valid[None, :], z, _MASKED), tf.where(neg_valid, zn, _MASKED)],
                axis=1,
            ),
            axis=1,
        )
        ssm = lse_all - own_z
    ntr = weight * tf.nn.softplus(tf.where(has_other, label_z - lse_other, _MASKED))

    f = lambda b: tf.cast(b, tf.float32)  # noqa: E731
    return _RowTerms(
        ssm=tf.where(positive, ssm, 0.0),
        ntr=tf.where(dislike & has_other, ntr, 0.0),
        positive=f(positive),
        dislike=f(dislike),
        no_candidates=f(dislike & tf.logical_not(has_other)),
    )


def _first_valid_slots(ids: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """bool [K]: slot k is valid and no earlier valid slot holds the same id (ids [K] >= 0)."""
    pos = tf.range(tf.shape(ids, out_type=tf.int64)[0], dtype=tf.int64)
    # Invalid slots get ids of their own (negative, distinct): they never claim an item.
    keyed = tf.where(valid, tf.cast(ids, tf.int64), -1 - pos)
    uniq, idx = tf.unique(keyed)
    first = tf.math.unsorted_segment_min(pos, idx, tf.shape(uniq)[0])
    return valid & tf.equal(tf.gather(first, idx), pos)


def _first_valid_in_rows(ids: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """bool [B, N]: slot n of row b is valid and no earlier valid slot of the row holds its id."""
    n = tf.shape(ids)[1]
    earlier = tf.linalg.band_part(tf.ones([n, n], tf.bool), -1, 0) & tf.logical_not(
        tf.eye(n, dtype=tf.bool)
    )  # [n, m]: m < n
    dup = tf.reduce_any(
        tf.equal(ids[:, :, None], ids[:, None, :]) & valid[:, None, :] & earlier[None, :, :],
        axis=2,
    )
    return valid & tf.logical_not(dup)


def _dislike_negatives(
    item: tf.Tensor | None, ids: tf.Tensor | None, rows: tf.Tensor | int
) -> tuple[tf.Tensor | None, tf.Tensor | None]:
    """(normalised [B, N, d], int64 [B, N]) or (None, None); checks they come together."""
    if (item is None) != (ids is None):
        raise ValueError("dislike negatives' embeddings and ids must be given together")
    if item is None or ids is None:
        return None, None
    ids = tf.cast(ids, tf.int64)
    tf.debugging.assert_equal(
        tf.shape(ids)[0], rows, message="dislike negative ids must have one row per batch row"
    )
    return _normalize(item), ids


def _sums(terms: _RowTerms) -> tf.Tensor:
    """float32 [5]: sum of ssm, sum of ntr, #positive, #dislike, #dislike without candidates."""
    return tf.stack(
        [
            tf.reduce_sum(terms.ssm),
            tf.reduce_sum(terms.ntr),
            tf.reduce_sum(terms.positive),
            tf.reduce_sum(terms.dislike),
            tf.reduce_sum(terms.no_candidates),
        ]
    )


def _output(
    terms: _RowTerms, local: tf.Tensor, global_: tf.Tensor, ntr_weight: float
) -> LossOutput:
    """Scale this replica's sums by the global counts (equal without a strategy)."""
    n_pos, n_dis = global_[2], global_[3]
    total = tf.math.divide_no_nan(local[0], n_pos) + ntr_weight * tf.math.divide_no_nan(
        local[1], n_dis
    )
    return LossOutput(
        total=total,
        ssm_mean=tf.math.divide_no_nan(global_[0], n_pos),
        ntr_mean=tf.math.divide_no_nan(global_[1], n_dis),
        num_positive=n_pos,
        num_dislike=n_dis,
        num_dislike_without_candidates=global_[4],
        ssm_rows=terms.ssm,
        ntr_rows=terms.ntr,
    )


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
        (module docstring).
      dislike_negatives: N, the user's most recent dislikes each positive row
        receives as extra candidates (log q = 0; module docstring); 0 = none.
      logq_label: ``corrected`` (LOSSES.md: the row's label logit is corrected like
        every slot) or ``exact`` (no -log q on the row's own label; module docstring).
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
        _check_logq_label(logq_label)
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
        ids = tf.reshape(tf.cast(item_ids, tf.int64), [-1])
        is_positive = tf.reshape(tf.cast(is_positive, tf.float32), [-1])
        weight = tf.reshape(tf.cast(weight, tf.float32), [-1])
        positive = is_positive > 0.5
        user, item = _normalize(user_embeddings), _normalize(item_embeddings)
        if extra_ids is None:
            extra = tf.zeros([0, tf.shape(item)[-1]], tf.float32)
            extra_ids = tf.zeros([0], tf.int64)
        else:
            extra = _normalize(extra_item_embeddings)
            extra_ids = tf.reshape(tf.cast(extra_ids, tf.int64), [-1])

        if self.logq == "streaming" and training:
            assert self.estimator is not None
            self.estimator.update(ids, mask=positive)

        # The candidate set is the global batch's: gather every replica's slots. The
        # extras are already global (the same M on every replica): never gathered.
        # A row's own slot in the gathered candidates: tagged (replica, row).
        ctx = replica_context_to_gather()
        replica = 0 if ctx is None else ctx.replica_id_in_sync_group
        own_tag = tf.cast(replica, tf.int64) * (1 << 32) + tf.range(
            tf.shape(ids, out_type=tf.int64)[0], dtype=tf.int64
        )
        g_item, g_ids, g_positive, g_tag = all_gather_rows(item, ids, positive, own_tag)
        g_extra, g_extra_ids = extra, extra_ids
        num_extra = tf.shape(g_extra_ids)[0]
        cand_ids = tf.concat([g_ids, g_extra_ids], axis=0)
        cand_logq = self._log_q(cand_ids, num_extra)
        neg_item, neg_ids = _dislike_negatives(
            dislike_item_embeddings, dislike_ids, tf.shape(ids)[0]
        )
        terms = _row_terms(
            user,
            item,
            ids,
            self._log_q(ids, num_extra),
            is_positive,
            weight,
            cand_item=tf.concat([g_item, g_extra], axis=0),
            cand_ids=cand_ids,
            cand_logq=cand_logq,
            cand_valid=tf.concat([g_positive, tf.ones([num_extra], tf.bool)], axis=0),
            temperature=self.temperature,
            remove_accidental_hits=self.remove_accidental_hits,
            dedupe=self.dedupe_candidates,
            neg_item=neg_item,
            neg_ids=neg_ids,
            exact_label=self.logq_label == "exact",
            own_slot=tf.equal(
                own_tag[:, None],
                tf.concat([g_tag, tf.fill([num_extra], tf.constant(-1, tf.int64))], axis=0)[
                    None, :
                ],
            ),
        )
        local = _sums(terms)
        global_ = (
            local
            if ctx is None
            else ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(local))
        )
        return _output(terms, local, global_, self.ntr_weight)

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
