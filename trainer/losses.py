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

The Keras layer that trains with these terms -- where the candidates and their log q
come from, and the replicas of ``tf.distribute`` -- is
:class:`trainer.retrieval_task.NTRRetrievalTask`; this module is the terms of one
replica's rows against a given candidate set.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, TypeAlias

from trainer._tf import tf

#: Masked logits: far below any real logit (|z| <= 1/tau + 14), finite so gradients stay finite.
_MASKED = -1e9

LogQLabel: TypeAlias = Literal["corrected", "exact"]


def check_logq_label(value: str) -> None:
    """Raise ValueError unless ``value`` is a ``loss.logq_label``."""
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


class RowTerms(NamedTuple):
    """Each row's terms (:func:`row_terms`), summed by :func:`term_sums`."""

    ssm: tf.Tensor  # [B] loss_r on positive rows, 0 elsewhere
    ntr: tf.Tensor  # [B] ntr_r on dislike rows, 0 elsewhere
    positive: tf.Tensor  # [B] float 1/0
    dislike: tf.Tensor  # [B] float 1/0
    no_candidates: tf.Tensor  # [B] float 1/0: dislike row without another item in C


def normalize(x: tf.Tensor) -> tf.Tensor:
    """float32 ``x`` L2-normalised along its last axis (every embedding the loss reads)."""
    return tf.math.l2_normalize(tf.cast(x, tf.float32), axis=-1)


def row_terms(
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
) -> RowTerms:
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
    zn, neg_valid, other = _dislike_slots(
        user, own_ids, positive, cand_ids, other, neg_item, neg_ids, temperature, dedupe
    )
    has_other = tf.reduce_any(other, axis=1) | tf.reduce_any(neg_valid, axis=1)
    lse_other = tf.reduce_logsumexp(
        tf.concat([tf.where(other, z, _MASKED), tf.where(neg_valid, zn, _MASKED)], axis=1), axis=1
    )  # [B]

    if remove_accidental_hits or dedupe:
        # Deduplicated: the row's label is in C once, as its own slot (no other copies).
        ssm = tf.nn.softplus(tf.where(has_other, lse_other - label_z, _MASKED))
    else:
        ssm = _loss_with_hits(z, zn, cand_valid, neg_valid, own_z, label_z, exact_label, own_slot)
    ntr = weight * tf.nn.softplus(tf.where(has_other, label_z - lse_other, _MASKED))

    f = lambda b: tf.cast(b, tf.float32)  # noqa: E731
    return RowTerms(
        ssm=tf.where(positive, ssm, 0.0),
        ntr=tf.where(dislike & has_other, ntr, 0.0),
        positive=f(positive),
        dislike=f(dislike),
        no_candidates=f(dislike & tf.logical_not(has_other)),
    )


def _dislike_slots(
    user: tf.Tensor,
    own_ids: tf.Tensor,
    positive: tf.Tensor,
    cand_ids: tf.Tensor,
    other: tf.Tensor,
    neg_item: tf.Tensor | None,
    neg_ids: tf.Tensor | None,
    temperature: float,
    dedupe: bool,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(logits [B, N], valid [B, N], ``other`` [B, K]) with each row's dislike negatives.

    ``other`` (C's valid slots of another item, per row) comes back without the slots a
    deduplicated row's dislike negatives take over; N = 0 without dislike negatives.
    """
    if neg_item is None or neg_ids is None:
        rows = tf.shape(user)[0]
        return tf.zeros([rows, 0], tf.float32), tf.zeros([rows, 0], tf.bool), other
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
    return zn, neg_valid, other


def _loss_with_hits(
    z: tf.Tensor,
    zn: tf.Tensor,
    cand_valid: tf.Tensor,
    neg_valid: tf.Tensor,
    own_z: tf.Tensor,
    label_z: tf.Tensor,
    exact_label: bool,
    own_slot: tf.Tensor | None,
) -> tf.Tensor:
    """[B] loss_r of positive rows without accidental hit removal: every slot of C counts."""
    if exact_label:
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
        return lse_all - label_z
    # Every candidate slot, own slot included (a positive row's own slot is a candidate).
    lse_all = tf.reduce_logsumexp(
        tf.concat(
            [tf.where(cand_valid[None, :], z, _MASKED), tf.where(neg_valid, zn, _MASKED)],
            axis=1,
        ),
        axis=1,
    )
    return lse_all - own_z


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


def dislike_negatives(
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
    return normalize(item), ids


def term_sums(terms: RowTerms) -> tf.Tensor:
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


def loss_output(
    terms: RowTerms, local: tf.Tensor, global_: tf.Tensor, ntr_weight: float
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
