"""The loss of LOSSES.md: worked example, a literal NumPy reference, TFRS parity, extremes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow_recommenders as tfrs

from tests.trainer.loss_reference import sampled_softmax_ntr
from trainer._tf import keras, tf
from trainer.frequency import StreamingFrequencyEstimator
from trainer.losses import LossOutput
from trainer.retrieval_task import NTRRetrievalTask

# ---------------------------------------------------------------- references


def reference_loss(
    user: np.ndarray,
    item: np.ndarray,
    ids: np.ndarray,
    is_positive: np.ndarray,
    weight: np.ndarray,
    q_of: dict[int, float] | None,
    tau: float,
    lam: float,
    extra: np.ndarray | None = None,
    extra_ids: np.ndarray | None = None,
    remove_hits: bool = True,
    dedupe: bool = False,
    negs: np.ndarray | None = None,
    neg_v: np.ndarray | None = None,
    exact_label: bool = False,
) -> dict[str, object]:
    """LOSSES.md read literally, in float64 with explicit loops and sets.

    ``dedupe``: the deduplicated convention of ``trainer/losses.py`` -- C keeps the first
    slot of each distinct id (positive rows in order, then extras) and drops the others.
    ``negs`` int [B, N] (0 = padding) and ``neg_v`` [B, N, d]: dislike negatives as in
    ``trainer/losses.py`` -- extra slots of a positive row's own, logit u . v / tau with
    no correction, padding and the row's own label dropped; with ``dedupe`` the row's
    first copy of each id only, and C's slots of those ids dropped for the row.
    ``exact_label``: the row's own label (its own slot, the numerator, a dislike's p)
    has logit u . v / tau with no -log q; every other slot keeps its correction.
    """
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    user, item = norm(user.astype(np.float64)), norm(item.astype(np.float64))
    slots_v = [item[r] for r in range(len(ids)) if is_positive[r] == 1]
    slots_id = [int(ids[r]) for r in range(len(ids)) if is_positive[r] == 1]
    slots_row = [r for r in range(len(ids)) if is_positive[r] == 1]
    if extra is not None:
        extra = norm(extra.astype(np.float64))
        slots_v += list(extra)
        slots_id += [int(j) for j in extra_ids]
        slots_row += [-1] * len(extra_ids)
    if dedupe:
        first = [k for k in range(len(slots_id)) if slots_id[k] not in slots_id[:k]]
        slots_v = [slots_v[k] for k in first]
        slots_id = [slots_id[k] for k in first]
        slots_row = [slots_row[k] for k in first]
    logq = (lambda j: 0.0) if q_of is None else (lambda j: math.log(q_of[j]))

    def z(r: int, v: np.ndarray, j: int) -> float:
        return float(user[r] @ v) / tau - logq(j)

    def label(r: int) -> float:
        return float(user[r] @ item[r]) / tau if exact_label else z(r, item[r], int(ids[r]))

    ssm, ntr, no_cand = [], [], 0
    ssm_rows, ntr_rows = np.zeros(len(ids)), np.zeros(len(ids))
    for r in range(len(ids)):
        y = int(ids[r])
        if is_positive[r] == 1:
            keep = [
                k
                for k in range(len(slots_id))
                if not ((remove_hits or dedupe) and slots_id[k] == y and slots_row[k] != r)
            ]
            mine: list[tuple[int, np.ndarray]] = []  # this row's dislike negatives
            if negs is not None and neg_v is not None:
                for j, v in zip(negs[r], neg_v[r], strict=True):
                    if j != 0 and j != y and not (dedupe and j in [i for i, _ in mine]):
                        mine.append((int(j), v.astype(np.float64) / np.linalg.norm(v)))
            if dedupe:
                keep = [k for k in keep if slots_id[k] not in [i for i, _ in mine]]
            logits = [
                label(r) if slots_row[k] == r else z(r, slots_v[k], slots_id[k]) for k in keep
            ]
            logits += [float(user[r] @ v) / tau for _, v in mine]  # log q = 0
            if dedupe and r not in [slots_row[k] for k in keep]:
                logits.append(label(r))  # the row's own label, once
            loss = -label(r) + math.log(sum(math.exp(x) for x in logits))
            ssm.append(loss)
            ssm_rows[r] = loss
        else:
            others = [
                z(r, slots_v[k], slots_id[k]) for k in range(len(slots_id)) if slots_id[k] != y
            ]
            if not others:
                no_cand += 1
                ntr.append(0.0)
                continue
            e_d = math.exp(label(r))
            p = e_d / (e_d + sum(math.exp(x) for x in others))
            val = -weight[r] * math.log(1.0 - p)
            ntr.append(val)
            ntr_rows[r] = val
    ssm_mean = float(np.mean(ssm)) if ssm else 0.0
    ntr_mean = float(np.mean(ntr)) if ntr else 0.0
    return {
        "total": ssm_mean + lam * ntr_mean,
        "ssm_mean": ssm_mean,
        "ntr_mean": ntr_mean,
        "num_positive": len(ssm),
        "num_dislike": len(ntr),
        "num_dislike_without_candidates": no_cand,
        "ssm_rows": ssm_rows,
        "ntr_rows": ntr_rows,
    }


def assert_matches(out: LossOutput, ref: dict[str, object], atol: float = 1e-5) -> None:
    for key, want in ref.items():
        got = getattr(out, key).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=key)


def table_log_q(q_of: dict[int, float], size: int = 64):
    table = np.zeros(size, np.float32)
    for j, q in q_of.items():
        table[j] = math.log(q)
    return lambda ids: tf.gather(table, ids)


# ---------------------------------------------------------------- worked example

WORKED = {
    "user": np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32),
    "item": np.array([[0.8, 0.6], [0.0, 1.0], [0.6, 0.8]], np.float32),
    "ids": np.array([10, 11, 12]),
    "pos": np.array([1.0, 1.0, 0.0], np.float32),
    "q": {10: 0.5, 11: 0.25, 12: 0.1},
}


def _worked(log_q) -> LossOutput:
    w = WORKED
    return sampled_softmax_ntr(
        w["user"],
        w["item"],
        w["ids"],
        w["pos"],
        np.ones(3, np.float32),
        log_q,
        temperature=0.5,
        ntr_weight=0.5,
    )


def test_worked_example_of_losses_md():
    out = _worked(table_log_q(WORKED["q"]))
    np.testing.assert_allclose(out.ssm_rows.numpy()[:2], [0.339178, 0.523878], atol=1e-5)
    np.testing.assert_allclose(out.ssm_mean.numpy(), 0.431528, atol=1e-5)
    np.testing.assert_allclose(out.ntr_rows.numpy()[2], 0.862204, atol=1e-5)
    # p recovered from the NTR term: ntr = -log(1 - p).
    np.testing.assert_allclose(1.0 - np.exp(-out.ntr_rows.numpy()[2]), 0.577770, atol=1e-5)
    np.testing.assert_allclose(out.total.numpy(), 0.862630, atol=1e-5)
    assert (out.num_positive.numpy(), out.num_dislike.numpy()) == (2.0, 1.0)


def test_worked_example_without_logq():
    np.testing.assert_allclose(_worked(None).ssm_mean.numpy(), 0.524897, atol=1e-5)
    # The same through a log q tensor [B] of zeros.
    np.testing.assert_allclose(
        _worked(np.zeros(3, np.float32)).ssm_mean.numpy(), 0.524897, atol=1e-5
    )


# ---------------------------------------------------------------- NumPy reference on random batches


def _random_batch(seed: int):
    """8 rows: duplicated positives (accidental hits), a dislike of an in-batch positive item."""
    rng = np.random.default_rng(seed)
    ids = np.array([3, 5, 3, 7, 9, 5, 7, 11])
    pos = np.array(
        [1, 1, 1, 1, 1, 0, 0, 0], np.float32
    )  # dislike of 5 and 7 (both candidates), of 11 (not)
    weight = np.array([1, 1, 1, 1, 1, 0.7, 1.3, 2.0], np.float32)
    user = rng.normal(size=(8, 4)).astype(np.float32)
    item = rng.normal(size=(8, 4)).astype(np.float32)
    extra_ids = np.array([9, 12, 3])  # 9 and 3 are accidental hits of positive rows
    extra = rng.normal(size=(3, 4)).astype(np.float32)
    q = {j: float(rng.uniform(0.01, 0.9)) for j in range(1, 13)}
    return user, item, ids, pos, weight, extra, extra_ids, q


@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_each_term_matches_numpy_reference(seed: int, remove_hits: bool):
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(seed)
    out = sampled_softmax_ntr(
        user,
        item,
        ids,
        pos,
        weight,
        table_log_q(q),
        0.3,
        0.7,
        extra,
        extra_ids,
        remove_accidental_hits=remove_hits,
    )
    ref = reference_loss(
        user, item, ids, pos, weight, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits
    )
    assert_matches(out, ref)
    assert ref["num_dislike_without_candidates"] == 0


@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_deduplicated_candidates_match_numpy_reference(seed: int, remove_hits: bool):
    """Positives [3, 5, 3, 7, 9] + extras [9, 12, 3]: C = {3, 5, 7, 9, 12}, one slot each."""
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(seed)
    args = (user, item, ids, pos, weight)
    out = sampled_softmax_ntr(
        *args, table_log_q(q), 0.3, 0.7, extra, extra_ids, remove_hits, dedupe_candidates=True
    )
    ref = reference_loss(*args, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits, dedupe=True)
    assert_matches(out, ref)
    # Not the LOSSES.md convention on this batch (it has repeated items) ...
    plain = reference_loss(*args, q, 0.3, 0.7, extra, extra_ids)
    assert abs(plain["ssm_mean"] - ref["ssm_mean"]) > 1e-3
    assert abs(plain["ntr_mean"] - ref["ntr_mean"]) > 1e-3


def test_deduplicated_candidates_keep_the_worked_example():
    """No item repeats in the worked example: both conventions give LOSSES.md's numbers."""
    w = WORKED
    out = sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32),
        table_log_q(w["q"]), temperature=0.5, ntr_weight=0.5, dedupe_candidates=True,
    )  # fmt: skip
    np.testing.assert_allclose(out.ssm_mean.numpy(), 0.431528, atol=1e-5)
    np.testing.assert_allclose(out.ntr_rows.numpy()[2], 0.862204, atol=1e-5)
    np.testing.assert_allclose(out.total.numpy(), 0.862630, atol=1e-5)


def test_deduplicated_task_reads_q_as_the_probability_of_being_in_c():
    user, item, ids, pos, weight, extra, extra_ids = _task_batch()
    n, m = 12, 3
    probs = np.linspace(0.0, 1.2, n + 1).astype(np.float32)
    task = NTRRetrievalTask(
        n, 0.3, 0.7, logq="counts", item_probabilities=probs, mixed_negatives=m,
        dedupe_candidates=True,
    )  # fmt: skip
    out = task(user, item, ids, pos, weight, extra_item_embeddings=extra, extra_ids=extra_ids)
    # q_j = 1 - (1 - p_j)(1 - 1/N)^M, with p clipped to [0, 1] first.
    q = {
        j: float(np.clip(1 - (1 - min(probs[j], 1.0)) * (1 - 1 / n) ** m, 1e-6, 1.0))
        for j in range(1, n + 1)
    }
    ref = reference_loss(user, item, ids, pos, weight, q, 0.3, 0.7, extra, extra_ids, dedupe=True)
    assert_matches(out, ref)


# ---------------------------------------------------------------- dislike negatives

#: The worked example's rows with N = 2 dislike inputs each (0 = padding): row 0 gets 12,
#: row 1 gets 12 (its 11 is its own label), row 2 is a dislike row (gets nothing).
WORKED_NEGS = np.array([[0, 12], [12, 11], [10, 11]])
WORKED_V = {0: [0.0, 0.0], 10: [0.8, 0.6], 11: [0.0, 1.0], 12: [0.6, 0.8]}


def _worked_with_negs(**kwargs) -> LossOutput:
    w = WORKED
    neg_v = np.array([[WORKED_V[j] for j in row] for row in WORKED_NEGS], np.float32)
    return sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32),
        table_log_q(w["q"]), temperature=0.5, ntr_weight=0.5,
        dislike_item=neg_v, dislike_ids=WORKED_NEGS, **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("dedupe", [False, True])
def test_dislike_negatives_worked_by_hand(dedupe: bool):
    """trainer/losses.py's worked example. Row 0: z = (2.293147, C's 11: 1.386294, its
    dislike 12: 0.6 / 0.5 = 1.2 uncorrected); row 1: (2.986294, C's 10: 2.613147, its
    dislike 12: 1.0 / 0.5 = 2.0); row 2's NTR term is LOSSES.md's. No repeats: the
    deduplicated convention gives the same numbers."""
    out = _worked_with_negs(dedupe_candidates=dedupe)
    by_hand = [
        math.log(math.exp(2.293147) + math.exp(1.386294) + math.exp(1.2)) - 2.293147,
        math.log(math.exp(2.986294) + math.exp(2.613147) + math.exp(2.0)) - 2.986294,
    ]
    np.testing.assert_allclose(by_hand, [0.553283, 0.723444], atol=1e-6)
    np.testing.assert_allclose(out.ssm_rows.numpy()[:2], [0.553283, 0.723444], atol=1e-5)
    np.testing.assert_allclose(out.ntr_rows.numpy()[2], 0.862204, atol=1e-5)
    np.testing.assert_allclose(out.ssm_mean.numpy(), 0.638363, atol=1e-5)
    np.testing.assert_allclose(out.total.numpy(), 0.638363 + 0.5 * 0.862204, atol=1e-5)
    assert (out.num_positive.numpy(), out.num_dislike.numpy()) == (2.0, 1.0)


def test_dislike_negatives_of_padding_only_change_nothing():
    w = WORKED
    zeros = np.zeros((3, 4), np.int64)
    out = sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32),
        table_log_q(w["q"]), temperature=0.5, ntr_weight=0.5,
        dislike_item=np.ones((3, 4, 2), np.float32), dislike_ids=zeros,
    )  # fmt: skip
    np.testing.assert_allclose(out.total.numpy(), 0.862630, atol=1e-5)


#: Dislike inputs (N = 3) of _random_batch's rows (labels [3, 5, 3, 7, 9 | 5, 7, 11]):
#: an item in C (5), one only among the extras (12), the own label (5 of row 1, twice 9
#: of row 4), a repeat (3, 3), all padding (row 2), items nowhere else (2, 4, 1), and
#: dislike rows, which get no extras.
RANDOM_NEGS = np.array(
    [[0, 5, 12], [5, 3, 3], [0, 0, 0], [2, 9, 4], [9, 9, 1], [3, 5, 7], [1, 2, 3], [0, 0, 9]]
)


@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_dislike_negatives_match_numpy_reference(seed: int, remove_hits: bool, dedupe: bool):
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(seed)
    neg_v = np.random.default_rng(seed + 10).normal(size=(8, 3, 4)).astype(np.float32)
    args = (user, item, ids, pos, weight)
    out = sampled_softmax_ntr(
        *args, table_log_q(q), 0.3, 0.7, extra, extra_ids, remove_hits,
        dedupe_candidates=dedupe, dislike_item=neg_v, dislike_ids=RANDOM_NEGS,
    )  # fmt: skip
    ref = reference_loss(
        *args, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits, dedupe=dedupe,
        negs=RANDOM_NEGS, neg_v=neg_v,
    )  # fmt: skip
    assert_matches(out, ref)
    # The extras matter on every positive row that has one, and only there.
    plain = reference_loss(
        *args, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits, dedupe=dedupe
    )
    moved = np.abs(ref["ssm_rows"] - plain["ssm_rows"]) > 1e-6
    assert moved.tolist() == [True, True, False, True, True, False, False, False]
    np.testing.assert_array_equal(ref["ntr_rows"], plain["ntr_rows"])


def test_dislike_negative_gives_a_loss_where_c_has_no_other_item():
    """C = {5, 5}: without its dislike of 7 row 0 has nothing to beat (loss 0)."""
    rng = np.random.default_rng(8)
    user, item = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
    neg_v = rng.normal(size=(2, 1, 3))
    args = (user.astype(np.float32), item.astype(np.float32), np.array([5, 5]))
    pos, w = np.ones(2, np.float32), np.ones(2, np.float32)
    negs = np.array([[7], [0]])
    out = sampled_softmax_ntr(
        *args, pos, w, None, 0.2, 1.0, dislike_item=neg_v.astype(np.float32), dislike_ids=negs
    )
    assert_matches(out, reference_loss(*args, pos, w, None, 0.2, 1.0, negs=negs, neg_v=neg_v))
    assert out.ssm_rows.numpy()[0] > 0.0 and out.ssm_rows.numpy()[1] == 0.0


def test_task_with_dislike_negatives_matches_reference():
    """The training path: counts-q with mixed negatives, dislike negatives uncorrected."""
    user, item, ids, pos, weight, extra, extra_ids = _task_batch()
    neg_v = np.random.default_rng(11).normal(size=(8, 3, 4)).astype(np.float32)
    n = 12
    probs = np.linspace(0.0, 1.2, n + 1).astype(np.float32)
    task = NTRRetrievalTask(
        n, 0.3, 0.7, logq="counts", item_probabilities=probs, mixed_negatives=3,
        dislike_negatives=3,
    )  # fmt: skip
    out = task(
        user, item, ids, pos, weight, extra_item_embeddings=extra, extra_ids=extra_ids,
        dislike_item_embeddings=neg_v, dislike_ids=RANDOM_NEGS,
    )  # fmt: skip
    q = {j: float(np.clip(probs[j] + 3 / n, 1e-6, 1.0)) for j in range(1, n + 1)}
    ref = reference_loss(
        user, item, ids, pos, weight, q, 0.3, 0.7, extra, extra_ids,
        negs=RANDOM_NEGS, neg_v=neg_v,
    )  # fmt: skip
    assert_matches(out, ref)


def test_task_refuses_missing_or_unexpected_dislike_negatives():
    user, item, ids, pos, weight, _, _ = _task_batch()
    negs, neg_v = RANDOM_NEGS, np.ones((8, 3, 4), np.float32)
    with pytest.raises(ValueError, match="dislike_negatives=2 but dislike negatives were not"):
        NTRRetrievalTask(12, 0.3, 0.7, logq="none", dislike_negatives=2)(
            user, item, ids, pos, weight
        )
    with pytest.raises(ValueError, match="dislike_negatives=0 but dislike negatives were given"):
        NTRRetrievalTask(12, 0.3, 0.7, logq="none")(
            user, item, ids, pos, weight, dislike_item_embeddings=neg_v, dislike_ids=negs
        )
    with pytest.raises(ValueError, match="must be >= 0"):
        NTRRetrievalTask(12, 0.3, 0.7, logq="none", dislike_negatives=-1)


def test_dislike_without_other_candidates_contributes_nothing_but_counts():
    rng = np.random.default_rng(3)
    user = rng.normal(size=(4, 3)).astype(np.float32)
    item = rng.normal(size=(4, 3)).astype(np.float32)
    ids = np.array(
        [5, 5, 5, 7]
    )  # C = {5, 5}: the dislike of 5 has no other item, the dislike of 7 has
    pos = np.array([1, 1, 0, 0], np.float32)
    weight = np.ones(4, np.float32)
    out = sampled_softmax_ntr(user, item, ids, pos, weight, None, 0.2, 1.0)
    ref = reference_loss(user, item, ids, pos, weight, None, 0.2, 1.0)
    assert_matches(out, ref)
    assert out.num_dislike_without_candidates.numpy() == 1.0
    assert out.ntr_rows.numpy()[2] == 0.0 and out.ntr_rows.numpy()[3] > 0.0


@pytest.mark.parametrize("kind", ["only_dislikes", "only_positives"])
def test_empty_groups_contribute_zero(kind: str):
    rng = np.random.default_rng(4)
    user = rng.normal(size=(3, 3)).astype(np.float32)
    item = rng.normal(size=(3, 3)).astype(np.float32)
    pos = np.zeros(3, np.float32) if kind == "only_dislikes" else np.ones(3, np.float32)
    out = sampled_softmax_ntr(
        user, item, np.array([1, 2, 3]), pos, np.ones(3, np.float32), None, 0.5, 0.5
    )
    assert np.isfinite(out.total.numpy())
    if kind == "only_dislikes":  # no candidates at all: everything is zero, all rows counted
        assert out.total.numpy() == 0.0 and out.num_dislike_without_candidates.numpy() == 3.0
    else:
        assert out.ntr_mean.numpy() == 0.0 and out.total.numpy() == pytest.approx(
            out.ssm_mean.numpy()
        )


# ---------------------------------------------------------------- extremes


@pytest.mark.parametrize("tau", [1e-3, 0.05])
def test_gradients_finite_for_extreme_inputs(tau: float):
    """p -> 1 (user on the disliked item, q tiny), p -> 0 (user opposite it, q clipped high)."""
    d = tf.Variable([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]])
    items = tf.Variable([[0.0, 1.0], [1.0, 0.0], [1.0, 1e-4], [1.0, 0.0]])
    ids = tf.constant([1, 2, 3, 4])
    pos = tf.constant([1.0, 1.0, 0.0, 0.0])
    log_q = tf.math.log(tf.constant([1.0, 1.0, 1e-6, 1.0]))
    with tf.GradientTape() as tape:
        out = sampled_softmax_ntr(d, items, ids, pos, tf.ones(4), log_q, tau, 1.0)
    grads = tape.gradient(out.total, [d, items])
    ntr = out.ntr_rows.numpy()
    assert np.all(np.isfinite(ntr)) and np.isfinite(out.total.numpy())
    assert ntr[2] > 10.0  # p ~ 1: -log(1 - p) large but finite
    assert ntr[3] < 1e-3  # p ~ 0
    for g in grads:
        assert np.all(np.isfinite(g.numpy()))


# ---------------------------------------------------------------- TFRS parity


@pytest.mark.parametrize("with_q", [False, True])
def test_lambda_zero_equals_tfrs_in_batch_softmax(with_q: bool):
    """lambda = 0: our positive mean is TFRS's Retrieval loss (SUM-reduced cross-entropy / rows)."""
    rng = np.random.default_rng(7)
    b, m = 6, 2
    user = rng.normal(size=(b, 5)).astype(np.float32)
    item = rng.normal(size=(b, 5)).astype(np.float32)
    ids = np.array([1, 2, 1, 3, 4, 5])  # a duplicate: accidental hit for rows 0 and 2
    extra, extra_ids = rng.normal(size=(m, 5)).astype(np.float32), np.array([2, 6])
    q = (
        rng.uniform(0.05, 0.9, size=7).astype(np.float32)
        if with_q
        else np.full(7, 0.25, np.float32)
    )
    all_ids = np.concatenate([ids, extra_ids])
    ours = sampled_softmax_ntr(
        user, item, ids, np.ones(b, np.float32), np.ones(b, np.float32),
        np.log(q[all_ids]), 0.1, 0.0, extra, extra_ids,
    )  # fmt: skip
    task = tfrs.tasks.Retrieval(
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, reduction=keras.losses.Reduction.SUM
        ),
        temperature=0.1,
        remove_accidental_hits=True,
    )
    n = lambda x: tf.math.l2_normalize(x, axis=-1)  # noqa: E731
    theirs = task(
        n(user),
        n(np.concatenate([item, extra])),
        candidate_sampling_probability=q[all_ids] if with_q else None,
        candidate_ids=all_ids,
        compute_metrics=False,
    )
    np.testing.assert_allclose(ours.total.numpy(), theirs.numpy() / b, rtol=1e-5)


# ---------------------------------------------------------------- the task layer


def _task_batch():
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(5)
    return user, item, ids, pos, weight, extra, extra_ids


def test_task_counts_uses_q_plus_mixed_share():
    user, item, ids, pos, weight, extra, extra_ids = _task_batch()
    n = 12
    probs = np.linspace(0.0, 1.2, n + 1).astype(np.float32)  # some q > 1 (clipped), token 0 unused
    task = NTRRetrievalTask(n, 0.3, 0.7, logq="counts", item_probabilities=probs, mixed_negatives=3)
    out = task(user, item, ids, pos, weight, extra_item_embeddings=extra, extra_ids=extra_ids)
    q = {j: float(np.clip(probs[j] + 3 / n, 1e-6, 1.0)) for j in range(1, n + 1)}
    assert_matches(out, reference_loss(user, item, ids, pos, weight, q, 0.3, 0.7, extra, extra_ids))


def test_task_streaming_updates_then_reads_in_graph_mode():
    user, item, ids, pos, weight, _, _ = _task_batch()
    est = StreamingFrequencyEstimator(buckets=64, hashes=2, alpha=0.5, initial_gap=4.0, seed=1)
    task = NTRRetrievalTask(12, 0.3, 0.7, logq="streaming", estimator=est)
    step = tf.function(lambda: task(user, item, ids, pos, weight, training=True))
    for _ in range(3):
        out = step()
    assert int(est.step.numpy()) == 3
    # q read after the update of the step: the estimator's state now.
    p = est.probability(tf.range(13)).numpy()
    q = {j: float(np.clip(p[j], 1e-6, 1.0)) for j in range(1, 13)}
    assert_matches(out, reference_loss(user, item, ids, pos, weight, q, 0.3, 0.7))
    # Evaluation does not move the estimator.
    task(user, item, ids, pos, weight, training=False)
    assert int(est.step.numpy()) == 3
    assert any(v is est.step for v in task.non_trainable_variables)
    assert not task.trainable_variables


def test_task_none_has_no_correction():
    user, item, ids, pos, weight, _, _ = _task_batch()
    out = NTRRetrievalTask(12, 0.3, 0.7, logq="none")(user, item, ids, pos, weight)
    assert_matches(out, reference_loss(user, item, ids, pos, weight, None, 0.3, 0.7))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"logq": "streaming"}, "needs a StreamingFrequencyEstimator"),
        ({"logq": "counts"}, "needs item_probabilities"),
        ({"logq": "counts", "item_probabilities": np.ones(12)}, "expected num_items \\+ 1 = 13"),
        ({"logq": "bogus"}, "loss.logq must be"),
        ({"logq": "none", "temperature": 0.0}, "temperature must be > 0"),
    ],
)
def test_task_config_errors(kwargs: dict, message: str):
    args = {"num_items": 12, "temperature": 0.1, "ntr_weight": 0.5, **kwargs}
    with pytest.raises(ValueError, match=message):
        NTRRetrievalTask(**args)


def test_task_refuses_missing_mixed_negatives():
    user, item, ids, pos, weight, _, _ = _task_batch()
    task = NTRRetrievalTask(12, 0.3, 0.7, logq="none", mixed_negatives=2)
    with pytest.raises(ValueError, match="mixed_negatives=2 but extra items were not given"):
        task(user, item, ids, pos, weight)


# ---------------------------------------------------------------- loss.logq_label = exact


def test_exact_label_worked_by_hand():
    """LOSSES.md's example with the label uncorrected (trainer/losses.py). Row 0: label
    0.8 / 0.5 = 1.6 against C's 11 (1.386294); row 1: 0.8 / 0.5 = 1.6 against C's 10
    (2.613147); row 2 (dislike of 12): 1.6 against 10 (1.893147) and 11 (3.386294)."""
    w = WORKED
    out = sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32),
        table_log_q(w["q"]), temperature=0.5, ntr_weight=0.5, logq_label="exact",
    )  # fmt: skip
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    o2 = math.log(math.exp(1.893147) + math.exp(3.386294))
    by_hand = [softplus(1.386294 - 1.6), softplus(2.613147 - 1.6), softplus(1.6 - o2)]
    np.testing.assert_allclose(by_hand, [0.591992, 1.322890, 0.128250], atol=1e-6)
    np.testing.assert_allclose(out.ssm_rows.numpy()[:2], by_hand[:2], atol=1e-5)
    np.testing.assert_allclose(out.ntr_rows.numpy()[2], by_hand[2], atol=1e-5)
    np.testing.assert_allclose(1.0 - np.exp(-out.ntr_rows.numpy()[2]), 0.120367, atol=1e-5)
    np.testing.assert_allclose(out.total.numpy(), 1.021566, atol=1e-5)
    # q = 1 for every item: nothing to correct, both variants agree.
    ones = table_log_q({10: 1.0, 11: 1.0, 12: 1.0})
    a = sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32), ones, 0.5, 0.5
    )
    b = sampled_softmax_ntr(
        w["user"], w["item"], w["ids"], w["pos"], np.ones(3, np.float32), ones, 0.5, 0.5,
        logq_label="exact",
    )  # fmt: skip
    np.testing.assert_allclose(a.total.numpy(), b.total.numpy(), rtol=1e-6)


@pytest.mark.parametrize("negs", [False, True])
@pytest.mark.parametrize("dedupe", [False, True])
@pytest.mark.parametrize("remove_hits", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_label_matches_numpy_reference(
    seed: int, remove_hits: bool, dedupe: bool, negs: bool
):
    """Accidental hits (3 and 9 among the extras, 3 and 5 twice in the batch), dislike rows,
    dislike negatives: only the row's own label loses its -log q."""
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(seed)
    neg_v = np.random.default_rng(seed + 10).normal(size=(8, 3, 4)).astype(np.float32)
    neg = {"negs": RANDOM_NEGS, "neg_v": neg_v} if negs else {}
    args = (user, item, ids, pos, weight)
    out = sampled_softmax_ntr(
        *args, table_log_q(q), 0.3, 0.7, extra, extra_ids, remove_hits,
        dedupe_candidates=dedupe, logq_label="exact",
        dislike_item=neg_v if negs else None, dislike_ids=RANDOM_NEGS if negs else None,
    )  # fmt: skip
    ref = reference_loss(
        *args, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits, dedupe=dedupe,
        exact_label=True, **neg,
    )  # fmt: skip
    assert_matches(out, ref)
    # Every row's figure moves (q < 1 everywhere here).
    plain = reference_loss(
        *args, q, 0.3, 0.7, extra, extra_ids, remove_hits=remove_hits, dedupe=dedupe, **neg
    )
    assert np.all(
        np.abs(ref["ssm_rows"] + ref["ntr_rows"] - plain["ssm_rows"] - plain["ntr_rows"]) > 1e-6
    )


@pytest.mark.parametrize("remove_hits", [True, False])
def test_task_with_exact_label_matches_reference(remove_hits: bool):
    """The training path: counts-q with mixed negatives and the label uncorrected."""
    user, item, ids, pos, weight, extra, extra_ids = _task_batch()
    n = 12
    probs = np.linspace(0.0, 1.2, n + 1).astype(np.float32)
    task = NTRRetrievalTask(
        n, 0.3, 0.7, logq="counts", item_probabilities=probs, mixed_negatives=3,
        remove_accidental_hits=remove_hits, logq_label="exact",
    )  # fmt: skip
    out = task(user, item, ids, pos, weight, extra_item_embeddings=extra, extra_ids=extra_ids)
    q = {j: float(np.clip(probs[j] + 3 / n, 1e-6, 1.0)) for j in range(1, n + 1)}
    ref = reference_loss(
        user, item, ids, pos, weight, q, 0.3, 0.7, extra, extra_ids,
        remove_hits=remove_hits, exact_label=True,
    )  # fmt: skip
    assert_matches(out, ref)
    assert task.get_config()["logq_label"] == "exact"


def test_exact_label_gradient_carries_the_papers_sample_weight():
    """d loss_r / d s_r = -(1 - P^_r), P^_r = sigmoid(s_r - o_r): the model's estimated
    probability of the label (Khrylchenko et al.); checked through the user vector."""
    user, item, ids, pos, weight, extra, extra_ids, q = _random_batch(3)
    ids1, pos1 = ids[:5], pos[:5]  # the positive rows only (labels 3, 5, 3, 7, 9)
    u = tf.Variable(user[:5])
    with tf.GradientTape() as tape:
        out = sampled_softmax_ntr(
            u, item[:5], ids1, pos1, weight[:5], table_log_q(q), 0.3, 0.0, logq_label="exact"
        )
        total = tf.reduce_sum(out.ssm_rows)
    grad = tape.gradient(total, u).numpy().astype(np.float64)
    # By hand: loss_r = softplus(o_r - s_r) over normalised vectors.
    un = user[:5].astype(np.float64) / np.linalg.norm(user[:5], axis=1, keepdims=True)
    vn = item[:5].astype(np.float64) / np.linalg.norm(item[:5], axis=1, keepdims=True)
    r = 0  # label 3, another copy in row 2 (an accidental hit, removed)
    s = un[r] @ vn[r] / 0.3
    others = [k for k in range(5) if ids1[k] != ids1[r]]
    zo = np.array([un[r] @ vn[k] / 0.3 - math.log(q[int(ids1[k])]) for k in others])
    o = math.log(np.exp(zo).sum())
    p_hat = 1.0 / (1.0 + math.exp(o - s))
    soft = np.exp(zo - o)
    d_du_normalised = (-(1.0 - p_hat)) * (vn[r] / 0.3 - (soft[:, None] * vn[others]).sum(0) / 0.3)
    # Through the normalisation u / |u|: project out the radial part, divide by |u|.
    norm = np.linalg.norm(user[r].astype(np.float64))
    want = (d_du_normalised - un[r] * (un[r] @ d_du_normalised)) / norm
    np.testing.assert_allclose(grad[r], want, rtol=1e-4, atol=1e-6)
    assert 0.0 < p_hat < 1.0


def test_task_refuses_an_unknown_logq_label():
    with pytest.raises(ValueError, match="loss.logq_label must be"):
        NTRRetrievalTask(12, 0.1, 0.5, logq="none", logq_label="bogus")  # type: ignore[arg-type]
